"""The gateway's error model, free of any transport.

`GatewayError` is the *expected* error: something about a request, the broker or the
configuration that the caller should hear about, with a status code mirroring gRPC's.
Each transport maps it with one table (gRPC codes as they are; HTTP in the shim).
Anything else that escapes a handler is unexpected and answered as INTERNAL.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "Code",
    "ConfigError",
    "FieldViolation",
    "GatewayError",
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


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request, as google.rpc.BadRequest.FieldViolation names it."""

    field: str
    description: str


class GatewayError(Exception):
    """An error the caller should hear about: a status code and a message naming the cause."""

    def __init__(self, code: Code, message: str, violations: Iterable[FieldViolation] = ()) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.violations = tuple(violations)

    def __repr__(self) -> str:
        return f"GatewayError({self.code.name}, {self.message!r})"


class ConfigError(ValueError):
    """Configuration or contracts that stop start-up; the message names the setting or entry."""


def invalid_argument(violations: Iterable[FieldViolation]) -> GatewayError:
    """INVALID_ARGUMENT for bad fields, the message summing up every violation."""
    violations = tuple(violations)
    summary = "; ".join(f"{v.field}: {v.description}" for v in violations)
    return GatewayError(Code.INVALID_ARGUMENT, f"invalid request: {summary}", violations)


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
