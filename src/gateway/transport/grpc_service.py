"""The gRPC transport: a generic handler per method of `Methods`, errors as rich statuses.

Each handler turns the gRPC call into a `CallContext` (deadline, metadata), calls the
transport-free method, and maps a `GatewayError` to a gRPC status carrying a
`google.rpc.Status` with `BadRequest` details (grpcio-status puts it in the trailers).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import structlog
from google.protobuf.message import DecodeError, Message
from grpc_status import rpc_status

from gateway.core.methods import CallContext, Method, Methods
from gateway.core.status import to_status_proto
from gateway.errors import Code, GatewayError

__all__ = ["generic_handlers"]

log = structlog.get_logger(logger_name="gateway.grpc")


def generic_handlers(methods: Methods) -> list[grpc.GenericRpcHandler[Any, Any]]:
    """One generic handler per service, for `grpc.aio.Server.add_generic_rpc_handlers`."""
    by_service: dict[str, dict[str, grpc.RpcMethodHandler[Any, Any]]] = {}
    for method in methods.values():
        service = method.descriptor.containing_service.full_name
        handler = _stream_handler(method) if method.streaming else _handler(method)
        by_service.setdefault(service, {})[method.descriptor.name] = handler
    return [
        grpc.method_handlers_generic_handler(service, handlers)
        for service, handlers in by_service.items()
    ]


def _handler(method: Method) -> grpc.RpcMethodHandler[Any, Any]:
    async def handle(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Message:
        call = _call_context(context)
        try:
            with _log_context(context, call):
                response: Message = await method.handler(_parse(method, raw), call)
                return response
        except GatewayError as error:
            await _abort(context, error)
            raise  # pragma: no cover - abort raises

    # Requests are parsed in the handler, not by grpc's deserializer hook: a message that
    # does not parse is the client's error (INVALID_ARGUMENT), where grpc would answer UNKNOWN.
    return grpc.unary_unary_rpc_method_handler(
        handle, response_serializer=lambda response: response.SerializeToString()
    )


def _stream_handler(method: Method) -> grpc.RpcMethodHandler[Any, Any]:
    async def handle(
        raw_requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Message]:
        call = _call_context(context)

        async def requests() -> AsyncIterator[Message]:
            async for raw in raw_requests:
                yield _parse(method, raw)

        try:
            with _log_context(context, call):
                async for response in method.handler(requests(), call):
                    yield response
        except GatewayError as error:
            await _abort(context, error)

    return grpc.stream_stream_rpc_method_handler(
        handle, response_serializer=lambda response: response.SerializeToString()
    )


async def _abort(context: grpc.aio.ServicerContext[Any, Any], error: GatewayError) -> None:
    """End the call with the error's code, message and google.rpc.Status details."""
    status = rpc_status.to_status(to_status_proto(error))
    await context.abort(status.code, status.details, status.trailing_metadata)


def _call_context(context: grpc.aio.ServicerContext[Any, Any]) -> CallContext:
    metadata = {
        key: value for key, value in (context.invocation_metadata() or ()) if isinstance(value, str)
    }
    return CallContext.with_timeout("grpc", context.time_remaining(), metadata)


def _log_context(
    context: grpc.aio.ServicerContext[Any, Any], call: CallContext
) -> contextlib.AbstractContextManager[Any]:
    request_id = call.metadata.get("x-request-id")
    return structlog.contextvars.bound_contextvars(
        transport="grpc",
        peer=context.peer(),
        **({"request_id": request_id} if request_id else {}),
    )


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
