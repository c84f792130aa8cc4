"""The gRPC transport: a generic handler per method of `Methods`, errors as rich statuses.

Each handler turns the gRPC call into a `CallContext` (deadline, metadata), calls the
transport-free method, and maps a `GatewayError` to a gRPC status carrying a
`google.rpc.Status` with `BadRequest` details (grpcio-status puts it in the trailers).
"""

from __future__ import annotations

from typing import Any

import grpc
import structlog
from google.protobuf.any_pb2 import Any as AnyProto
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from gateway.errors import Code, GatewayError
from gateway.methods import CallContext, Method, Methods

__all__ = ["generic_handlers", "to_status_proto"]

log = structlog.get_logger("gateway.grpc")


def generic_handlers(methods: Methods) -> list[grpc.GenericRpcHandler[Any, Any]]:
    """One generic handler per service, for `grpc.aio.Server.add_generic_rpc_handlers`."""
    by_service: dict[str, dict[str, grpc.RpcMethodHandler[Any, Any]]] = {}
    for method in methods.values():
        service = method.descriptor.containing_service.full_name
        by_service.setdefault(service, {})[method.descriptor.name] = _handler(method)
    return [
        grpc.method_handlers_generic_handler(service, handlers)
        for service, handlers in by_service.items()
    ]


def _handler(method: Method) -> grpc.RpcMethodHandler[Any, Any]:
    async def handle(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Message:
        metadata = {
            key: value
            for key, value in (context.invocation_metadata() or ())
            if isinstance(value, str)
        }
        call = CallContext(transport="grpc", timeout=context.time_remaining(), metadata=metadata)
        request_id = metadata.get("x-request-id")
        try:
            with structlog.contextvars.bound_contextvars(
                transport="grpc",
                peer=context.peer(),
                **({"request_id": request_id} if request_id else {}),
            ):
                return await method.handler(_parse(method, raw), call)
        except GatewayError as error:
            status = rpc_status.to_status(to_status_proto(error))
            await context.abort(status.code, status.details, status.trailing_metadata)
            raise  # pragma: no cover - abort raises

    # Requests are parsed in the handler, not by grpc's deserializer hook: a message that
    # does not parse is the client's error (INVALID_ARGUMENT), where grpc would answer UNKNOWN.
    return grpc.unary_unary_rpc_method_handler(
        handle, response_serializer=lambda response: response.SerializeToString()
    )


def _text(text: str) -> str:
    """Text a protobuf string can hold: a JSON key or value echoed back from a request may
    carry lone surrogates, which are shown escaped (\\ud800) instead."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _parse(method: Method, raw: bytes) -> Message:
    try:
        return method.request_type.FromString(raw)
    except DecodeError as exc:
        error = GatewayError(
            Code.INVALID_ARGUMENT,
            f"the request is not a valid {method.descriptor.input_type.full_name}: {exc}",
        )
        # Rejected before any method ran; methods log their own outcome.
        log.info(
            "grpc request rejected", rpc=method.full_name, code=error.code.name, error=error.message
        )
        raise error from None


def to_status_proto(error: GatewayError) -> status_pb2.Status:
    """The google.rpc.Status of an error, with a BadRequest detail naming each bad field."""
    status = status_pb2.Status(code=int(error.code), message=_text(error.message))
    if error.violations:
        detail = AnyProto()
        detail.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=_text(v.field), description=_text(v.description)
                    )
                    for v in error.violations
                ]
            )
        )
        status.details.append(detail)
    return status
