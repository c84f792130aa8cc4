"""A GatewayError as a google.rpc.Status: the error body of both transports and of batches."""

from __future__ import annotations

from google.protobuf import duration_pb2
from google.protobuf.any_pb2 import Any as AnyProto
from google.rpc import error_details_pb2, status_pb2

from gateway.errors import GatewayError, escaped

__all__ = ["to_status_proto"]


def to_status_proto(error: GatewayError) -> status_pb2.Status:
    """The google.rpc.Status of an error, with a BadRequest detail naming each bad field and a
    RetryInfo detail when the gateway knows when a retry may succeed."""
    status = status_pb2.Status(code=int(error.code), message=escaped(error.message))
    if error.retry_after is not None:
        detail = AnyProto()
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(max(1, round(error.retry_after * 1e9)))
        detail.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        status.details.append(detail)
    if error.violations:
        detail = AnyProto()
        detail.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=escaped(v.field), description=escaped(v.description)
                    )
                    for v in error.violations
                ]
            )
        )
        status.details.append(detail)
    return status
