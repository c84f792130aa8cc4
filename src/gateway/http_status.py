"""gRPC status codes as HTTP statuses: grpc-gateway's table, shared by the shim and OpenAPI."""

from __future__ import annotations

from gateway.errors import Code

__all__ = ["HTTP_STATUS"]

# As grpc-gateway's runtime.HTTPStatusFromCode and Envoy's transcoder map them, except that
# FAILED_PRECONDITION is 400 as both do (not 412).
HTTP_STATUS: dict[Code, int] = {
    Code.OK: 200,
    Code.CANCELLED: 499,
    Code.UNKNOWN: 500,
    Code.INVALID_ARGUMENT: 400,
    Code.DEADLINE_EXCEEDED: 504,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.PERMISSION_DENIED: 403,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.FAILED_PRECONDITION: 400,
    Code.ABORTED: 409,
    Code.OUT_OF_RANGE: 400,
    Code.UNIMPLEMENTED: 501,
    Code.INTERNAL: 500,
    Code.UNAVAILABLE: 503,
    Code.DATA_LOSS: 500,
    Code.UNAUTHENTICATED: 401,
}
