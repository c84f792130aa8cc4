"""The gateway's error model, free of any transport, and the one table of status codes.

`GatewayError` is the *expected* error: something about a request, the broker or the
configuration that the caller should hear about, with a status code mirroring gRPC's.
Anything else that escapes a method is unexpected and answered as INTERNAL.

`STATUS` holds every fact about a code in one row: its HTTP status in the REST shim (the
table grpc-gateway and Envoy's transcoder share), the level of the log line of a call or
task that ends with it, whether a client may retry, and what the gateway means by it (the
OpenAPI document's error responses are made of these lines). The gRPC mapping is the code
itself. Adding a code the gateway answers with is one row.

What an error says is bounded, however hostile the request: grpc carries the status in the
trailers, which a client refuses past 8 KB (it then sees RESOURCE_EXHAUSTED "received metadata
size exceeds limit" instead of the error); the REST shim writes it as the body; the log line
carries the message. A `GatewayError` names at most `MAX_VIOLATIONS` violations and cuts its
texts, and `clip` cuts a client's text an error quotes.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "ECHO_LENGTH",
    "HTTP_ONLY_STATUS",
    "MAX_VIOLATIONS",
    "STATUS",
    "Code",
    "ConfigError",
    "FieldViolation",
    "GatewayError",
    "Retry",
    "StatusRow",
    "clip",
    "escaped",
    "exchange_not_found",
    "invalid_argument",
    "unroutable",
]


class Code(enum.IntEnum):
    """gRPC status codes (google.rpc.Code), so a GatewayError maps 1:1 onto gRPC."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16

    @property
    def row(self) -> StatusRow:
        return STATUS[self]


class Retry(enum.Enum):
    """What a client should do with an answer of this code."""

    NO = "fix the request (or the broker's definitions); the same request fails the same way"
    SAME_KEY = "the outcome may be unknown: retry with the same idempotency_key"
    LATER = "nothing was published: retry later, with backoff"


@dataclass(frozen=True)
class StatusRow:
    """Everything about one status code, for every transport."""

    http_status: int
    """The REST shim's HTTP status (grpc-gateway's runtime.HTTPStatusFromCode)."""
    log_level: str
    """The level of the one log line of a call or task that ends with this code: the client's
    mistakes are routine (info), the broker's trouble is the operator's (warning), the
    gateway's own faults are errors."""
    retry: Retry
    doc: str = ""
    """When the gateway answers with this code, for API documentation; empty when it never does
    (tests/unit/test_openapi.py checks the documented codes against those the source raises)."""


STATUS: dict[Code, StatusRow] = {
    Code.OK: StatusRow(200, "info", Retry.NO),
    Code.CANCELLED: StatusRow(
        499,
        "info",
        Retry.SAME_KEY,
        "CANCELLED: the client went away before the answer. A publish already under way is "
        "finished in the background: retry with the same idempotency_key.",
    ),
    Code.UNKNOWN: StatusRow(500, "error", Retry.NO),
    Code.INVALID_ARGUMENT: StatusRow(
        400,
        "info",
        Retry.NO,
        "INVALID_ARGUMENT: malformed JSON, a wrong field type, an unknown field or a failed "
        "field rule (a google.rpc.BadRequest detail names each field, up to 20, and a last "
        "violation with the field '…' says there were more); an unknown task_type "
        "(the message lists the known ones); a user_id that is empty, over 128 characters or "
        "contains ':' or control characters; an idempotency_key over 256 characters. Nothing "
        "was published: fix the request.",
    ),
    Code.DEADLINE_EXCEEDED: StatusRow(
        504,
        "warning",
        Retry.SAME_KEY,
        "DEADLINE_EXCEEDED: no confirm from the broker before the deadline (Grpc-Timeout, or "
        "the gateway's cap). The outcome is unknown: the task may have been published. Retry "
        "with the same idempotency_key to get the same task key.",
    ),
    Code.NOT_FOUND: StatusRow(
        404,
        "info",
        Retry.NO,
        "NOT_FOUND: the method found nothing by that name, e.g. an unknown task type for the "
        "schema route.",
    ),
    Code.ALREADY_EXISTS: StatusRow(409, "info", Retry.NO),
    Code.PERMISSION_DENIED: StatusRow(
        403,
        "info",
        Retry.NO,
        "PERMISSION_DENIED: the client may not publish this task type, or for this user_id "
        "(auth.mode required). Nothing was published.",
    ),
    Code.RESOURCE_EXHAUSTED: StatusRow(
        429,
        "warning",
        Retry.LATER,
        "RESOURCE_EXHAUSTED: the client is over its rate quota (a google.rpc.RetryInfo detail, "
        "and Retry-After, say when a token is free), the cap on publishes awaiting a confirm is "
        "reached, or the broker is blocking publishers (memory or disk alarm). Nothing was "
        "published: retry later, with backoff.",
    ),
    Code.FAILED_PRECONDITION: StatusRow(
        400,
        "info",
        Retry.NO,
        "FAILED_PRECONDITION: the route's exchange does not exist on the broker, or the broker "
        "returned the message as unroutable (the message names exchange and routing key). "
        "Nothing was published: fix the broker's definitions.",
    ),
    Code.ABORTED: StatusRow(409, "info", Retry.NO),
    Code.OUT_OF_RANGE: StatusRow(400, "info", Retry.NO),
    Code.UNIMPLEMENTED: StatusRow(501, "info", Retry.NO),
    Code.INTERNAL: StatusRow(
        500,
        "error",
        Retry.NO,
        "INTERNAL: something unexpected; the gateway logs it, the reply carries no internals.",
    ),
    Code.UNAVAILABLE: StatusRow(
        503,
        "warning",
        Retry.SAME_KEY,
        "UNAVAILABLE: the broker is down or the gateway is reconnecting to it, the broker "
        "nacked the message, or the gateway is shutting down. Retry with the same "
        "idempotency_key.",
    ),
    Code.DATA_LOSS: StatusRow(500, "error", Retry.NO),
    Code.UNAUTHENTICATED: StatusRow(
        401,
        "info",
        Retry.NO,
        "UNAUTHENTICATED: no bearer token (Authorization: Bearer <token>) or client "
        "certificate, or one the gateway does not know (auth.mode required).",
    ),
}


# Statuses of the REST shim's own HTTP layer, answered before any method runs: the code in
# their google.rpc.Status body, and when the shim answers with them.
HTTP_ONLY_STATUS: dict[int, tuple[Code, str]] = {
    404: (Code.NOT_FOUND, "No route matches the path."),
    405: (
        Code.UNIMPLEMENTED,
        "The path exists, but not for this HTTP method; the Allow header lists those it takes.",
    ),
    408: (
        Code.DEADLINE_EXCEEDED,
        "The request body had not all arrived server.keepalive_timeout_seconds after its "
        "headers; the connection is closed. Nothing was published.",
    ),
    413: (
        Code.RESOURCE_EXHAUSTED,
        "The request is larger than the gateway's limit (grpc.max_request_bytes). Nothing was "
        "published.",
    ),
    415: (
        Code.INVALID_ARGUMENT,
        "The request has a body whose Content-Type is not application/json.",
    ),
}


# The most violations an error names; a last one says there were more.
MAX_VIOLATIONS = 20
# The most characters of a client's text (a key, a value, a task type) an error quotes.
ECHO_LENGTH = 64
# Bounds in bytes of UTF-8: grpc percent-encodes a non-ASCII message byte by byte, and sends
# the google.rpc.Status (message and details) in base64. With these, the status stays under
# 3 KB and the trailers under 6 KB even of non-ASCII text; under 4.5 KB of ASCII.
_MESSAGE_BYTES = 512
_FIELD_BYTES = 192
_DESCRIPTION_BYTES = 384
_VIOLATIONS_BYTES = 2048

_CUT = "…"


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request, as google.rpc.BadRequest.FieldViolation names it."""

    field: str
    description: str


class GatewayError(Exception):
    """An error the caller should hear about: a status code and a message naming the cause."""

    def __init__(
        self,
        code: Code,
        message: str,
        violations: Iterable[FieldViolation] = (),
        *,
        retry_after: float | None = None,
    ) -> None:
        """`retry_after`: seconds after which a retry may succeed (google.rpc.RetryInfo, and
        Retry-After on HTTP), when the gateway knows it."""
        message = _cut(message, _MESSAGE_BYTES)
        super().__init__(message)
        self.code = code
        self.message = message
        self.violations = _bounded(violations)
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return f"GatewayError({self.code.name}, {self.message!r})"


class ConfigError(ValueError):
    """Configuration or contracts that stop start-up; the message names the setting or entry."""


def invalid_argument(violations: Iterable[FieldViolation]) -> GatewayError:
    """INVALID_ARGUMENT for bad fields, the message summing up the violations it names."""
    named = _bounded(violations)
    summary = "; ".join(f"{v.field}: {v.description}" for v in named)
    return GatewayError(Code.INVALID_ARGUMENT, f"invalid request: {summary}", named)


def clip(text: str, length: int = ECHO_LENGTH) -> str:
    """A client's text as an error quotes it: its first `length` characters, '…' if longer."""
    return text if len(text) <= length else text[: length - 1] + _CUT


# In place of the violations an error does not name.
_MORE = FieldViolation(_CUT, "and more violations, not named here, to keep the error short")


def _bounded(violations: Iterable[FieldViolation]) -> tuple[FieldViolation, ...]:
    """The first violations, each cut short, within MAX_VIOLATIONS and a size in bytes; one
    more says there were others. A lazy iterable is read no further than needed."""
    named: list[FieldViolation] = []
    size = 0
    for violation in itertools.islice(violations, MAX_VIOLATIONS + 1):
        cut = FieldViolation(
            _cut(violation.field, _FIELD_BYTES), _cut(violation.description, _DESCRIPTION_BYTES)
        )
        size += _size(cut.field) + _size(cut.description)
        if len(named) == MAX_VIOLATIONS or size > _VIOLATIONS_BYTES:
            named.append(_MORE)
            break
        named.append(cut)
    return tuple(named)


def _cut(text: str, limit: int) -> str:
    """`text` within `limit` bytes of UTF-8, cut short with '…' if longer."""
    encoded = _encode(text)
    if len(encoded) <= limit:
        return text
    return encoded[: limit - len(_CUT.encode())].decode("utf-8", "ignore") + _CUT


def _size(text: str) -> int:
    return len(_encode(text))


def escaped(text: str) -> str:
    """Text a protobuf string can hold: lone surrogates shown escaped (\\ud800)."""
    return _encode(text).decode("utf-8")


def _encode(text: str) -> bytes:
    # A JSON key or value echoed back may hold lone surrogates, which UTF-8 cannot encode; the
    # status shows them escaped (`escaped`), and so they are measured here.
    return text.encode("utf-8", "backslashreplace")


def exchange_not_found(exchange: str, routing_key: str) -> GatewayError:
    """The route's exchange does not exist on the broker (the gateway never creates topology)."""
    return GatewayError(
        Code.FAILED_PRECONDITION,
        f"exchange {exchange!r} does not exist on the broker "
        f"(routing key {routing_key!r}); the broker's definitions must declare it",
    )


def unroutable(exchange: str, routing_key: str) -> GatewayError:
    """The broker returned a mandatory message: no queue is bound for its routing key."""
    return GatewayError(
        Code.FAILED_PRECONDITION,
        f"message to exchange {exchange!r} with routing key {routing_key!r} was unroutable: "
        "no queue is bound for it; the broker's definitions must bind one",
    )
