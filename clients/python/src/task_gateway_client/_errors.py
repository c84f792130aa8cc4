"""The errors a caller catches, and how a gRPC failure becomes one.

The gateway answers an error with a gRPC status carrying a `google.rpc.Status`, whose details
name the bad fields (`BadRequest`) or say when to try again (`RetryInfo`); batch entries carry
the same `google.rpc.Status` per task. Both are read here into one exception hierarchy.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import grpc
from google.protobuf.any_pb2 import Any as AnyProto
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

__all__ = [
    "FieldViolation",
    "InvalidTask",
    "OutcomeUnknown",
    "PermissionDenied",
    "PublisherFull",
    "QuotaExceeded",
    "TaskGatewayError",
    "Unauthenticated",
    "Unavailable",
]


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a task, as the gateway's `google.rpc.BadRequest` names it."""

    field: str
    description: str


class TaskGatewayError(Exception):
    """Any error of a call to the gateway: a gRPC status code, its message, and the bad fields.

    Codes without a subclass of their own (FAILED_PRECONDITION for a missing exchange or an
    unroutable task, INTERNAL, ...) are raised as this class.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        violations: Iterable[FieldViolation] = (),
        *,
        retry_delay: float | None = None,
    ) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.violations = list(violations)
        # Seconds the server asked us to wait before trying again (google.rpc.RetryInfo).
        self.retry_delay = retry_delay


class InvalidTask(TaskGatewayError):
    """The gateway refused the task as it is (INVALID_ARGUMENT); `violations` names the fields.

    Nothing was published; sending it again unchanged fails again.
    """


class PermissionDenied(TaskGatewayError):
    """The caller may not publish this task type or user_id (PERMISSION_DENIED)."""


class Unauthenticated(TaskGatewayError):
    """The token is missing or not accepted (UNAUTHENTICATED)."""


class QuotaExceeded(TaskGatewayError):
    """RESOURCE_EXHAUSTED: a quota, the gateway's in-flight cap, or a request over its size limit.

    Nothing was published. When the gateway said when to try again (`retry_delay`) the client
    retried until the deadline left no room for another wait.
    """


class Unavailable(TaskGatewayError):
    """The gateway or its broker stayed unavailable, and the task was not published.

    Every attempt was refused before anything was sent to the broker; it is safe to try again
    later, with or without the same idempotency key.
    """


class OutcomeUnknown(TaskGatewayError):
    """The task may or may not have been published, and the retries did not settle it.

    Some attempt ended without an answer (a deadline, a dropped connection, a broker that went
    away before its confirm). Retry with `idempotency_key`: the gateway derives the same task
    id from it, so a task that did land is not made twice (and its consumers de-duplicate by
    task_id).
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        violations: Iterable[FieldViolation] = (),
        *,
        idempotency_key: str,
    ) -> None:
        super().__init__(code, message, violations)
        self.idempotency_key = idempotency_key


class PublisherFull(TaskGatewayError):
    """A publisher made with `when_full="raise"` already holds `max_outstanding` tasks.

    Raised by the client itself, before anything is sent; code RESOURCE_EXHAUSTED.
    """


_CLASSES: dict[grpc.StatusCode, type[TaskGatewayError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidTask,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.RESOURCE_EXHAUSTED: QuotaExceeded,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
}
_CODES = {code.value[0]: code for code in grpc.StatusCode}

# How the gateway says that a failed publish may have reached the broker all the same (a
# channel lost before the confirm, an exchange deleted under a publish in flight, a shutdown
# cutting a publish off). Its other UNAVAILABLE answers come before anything was sent.
_UNKNOWN_OUTCOME_WORDING = "the outcome is unknown"
# grpc's own wordings when it never reached the server, no connection made (pick_first's
# "failed to connect to all addresses", round_robin's "connections to all backends failing")
# or the target's name not resolved (grpc 1.85's "errors resolving <target>", older releases'
# "DNS resolution failed"): no request left the client.
_NOT_CONNECTED_WORDINGS = (
    "failed to connect to all addresses",
    "connections to all backends failing",
    "errors resolving",
    "DNS resolution failed",
)
# grpc's wording when the client cancelled the call itself, by closing its channel under it.
_CLOSED_BY_CLIENT_WORDING = "Channel closed!"


@dataclass(frozen=True)
class Failure:
    """One failed attempt: the error, and whether the task may have been published by it."""

    error: TaskGatewayError
    outcome_unknown: bool


def from_rpc_error(error: grpc.RpcError) -> Failure:
    """A failed call (sync or asyncio grpc) as a Failure."""
    call: grpc.Call = error  # type: ignore[assignment]  # every RpcError grpc raises is a Call
    code = call.code()
    message = call.details() or ""
    try:
        status = rpc_status.from_call(call)
    except (ValueError, DecodeError):
        # Details that contradict the call's own status, or that do not parse (a proxy's
        # mangled trailer): not the gateway's, so read as none.
        status = None
    if status is None:
        return _transport_failure(code, message)
    return _from_status(code, status.message, status.details)


def _transport_failure(code: grpc.StatusCode, message: str) -> Failure:
    """A call that ended without the gateway's status: the transport's doing (a connection
    dropped, a proxy, the client's own deadline)."""
    if code is grpc.StatusCode.CANCELLED and _CLOSED_BY_CLIENT_WORDING not in message:
        # The client cancels a call only by closing its channel; any other CANCELLED is the
        # server or a proxy resetting the call after it was sent, so the task may have been
        # published. gRPC calls a connection lost during a call UNAVAILABLE: retried as one.
        error = Unavailable(
            grpc.StatusCode.UNAVAILABLE,
            f"the call was cut off after it was sent (CANCELLED: {message}), by the server or "
            "a proxy",
        )
        return Failure(error, outcome_unknown=True)
    # Unless grpc never reached the server, the request may have arrived.
    unknown = code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE) and not any(
        wording in message for wording in _NOT_CONNECTED_WORDINGS
    )
    return Failure(_error(code, message, ()), unknown)


def client_failure(error: Exception, *, sent: bool) -> Failure:
    """A call that failed in the client itself (e.g. on a closed channel), with no gRPC status."""
    failed = TaskGatewayError(grpc.StatusCode.UNKNOWN, f"the call failed in the client: {error!r}")
    return Failure(failed, outcome_unknown=sent)


def from_status(status: status_pb2.Status) -> Failure:
    """The error of one entry of a batch as a Failure."""
    code = _CODES.get(status.code, grpc.StatusCode.UNKNOWN)
    return _from_status(code, status.message, status.details)


def _from_status(code: grpc.StatusCode, message: str, details: Iterable[AnyProto]) -> Failure:
    violations: list[FieldViolation] = []
    retry_delay = None
    for detail in details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            violations += [
                FieldViolation(v.field, v.description) for v in bad_request.field_violations
            ]
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry_info = error_details_pb2.RetryInfo()
            detail.Unpack(retry_info)
            retry_delay = retry_info.retry_delay.ToTimedelta().total_seconds()
    unknown = code is grpc.StatusCode.DEADLINE_EXCEEDED or _UNKNOWN_OUTCOME_WORDING in message
    return Failure(_error(code, message, violations, retry_delay), unknown)


def _error(
    code: grpc.StatusCode,
    message: str,
    violations: Iterable[FieldViolation],
    retry_delay: float | None = None,
) -> TaskGatewayError:
    return _CLASSES.get(code, TaskGatewayError)(code, message, violations, retry_delay=retry_delay)
