"""The gateway's methods as gRPC handlers, with errors as rich statuses.

Each handler turns the gRPC call into a `CallContext`, parses the request, calls the method
(wrapped by the middlewares) and maps a `GatewayError` to a gRPC status carrying a
`google.rpc.Status` with `BadRequest` details (grpcio-status puts it in the trailers).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import grpc
import structlog
from google.protobuf.message import DecodeError, Message
from grpc_status import rpc_status

from gateway.core.context import CallContext
from gateway.core.method import Method
from gateway.core.methods import Methods
from gateway.core.status import to_status_proto
from gateway.errors import Code, GatewayError
from gateway.transport.tls import peer_identity_from_auth_context

__all__ = ["ServiceHandlers", "call_context", "method_handlers"]

log = structlog.get_logger(logger_name="gateway.grpc")


# A string: grpc.RpcMethodHandler is subscriptable only in the type stubs.
ServiceHandlers: TypeAlias = "dict[str, dict[str, grpc.RpcMethodHandler[Any, Any]]]"


def method_handlers(methods: Methods, *, identify_peers: bool) -> ServiceHandlers:
    """The handler of each method, by service and method name. `identify_peers`: read the
    client's certificate (mutual TLS) into each call's context."""
    by_service: ServiceHandlers = {}
    for method in methods.values():
        if method.streaming:
            handler = _stream_handler(method, identify_peers)
        else:
            handler = _handler(method, identify_peers)
        by_service.setdefault(method.service, {})[method.name] = handler
    return by_service


def _handler(method: Method, identify_peers: bool) -> grpc.RpcMethodHandler[Any, Any]:
    async def handle(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Message:
        call = call_context(method.full_name, context, identify_peers)
        try:
            response: Message = await method.handler(_parse(method, raw, call), call)
        except GatewayError as error:
            await _abort(context, error)
            raise  # pragma: no cover - abort raises
        except Exception:
            await _abort(context, _unexpected(call))
            raise  # pragma: no cover - abort raises
        return response

    # Requests are parsed in the handler, not by grpc's deserializer hook: a message that
    # does not parse is the client's error (INVALID_ARGUMENT), where grpc would answer UNKNOWN.
    return grpc.unary_unary_rpc_method_handler(
        handle, response_serializer=lambda response: response.SerializeToString()
    )


def _stream_handler(method: Method, identify_peers: bool) -> grpc.RpcMethodHandler[Any, Any]:
    async def handle(
        raw_requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Message]:
        call = call_context(method.full_name, context, identify_peers)

        async def requests() -> AsyncIterator[Message]:
            async for raw in raw_requests:
                yield _parse(method, raw, call)

        try:
            async for response in method.handler(requests(), call):
                yield response
        except GatewayError as error:
            await _abort(context, error)
        except Exception:
            await _abort(context, _unexpected(call))

    return grpc.stream_stream_rpc_method_handler(
        handle, response_serializer=lambda response: response.SerializeToString()
    )


async def _abort(context: grpc.aio.ServicerContext[Any, Any], error: GatewayError) -> None:
    """End the call with the error's code, message and google.rpc.Status details."""
    status = rpc_status.to_status(to_status_proto(error))
    await context.abort(status.code, status.details, status.trailing_metadata)


def _unexpected(call: CallContext) -> GatewayError:
    """INTERNAL for a bug, logged whole here: the client hears nothing of its internals.

    Left to grpc, the exception's type and text would reach the client as UNKNOWN.
    """
    log.exception("unexpected error in a method", rpc=call.method, peer=call.peer)
    return GatewayError(Code.INTERNAL, "internal error; see the gateway's log")


def call_context(
    method: str, context: grpc.aio.ServicerContext[Any, Any], identify_peer: bool = True
) -> CallContext:
    """What the gRPC call of `method` (its wire name) says about itself: peer, deadline,
    metadata, client certificate (with `identify_peer`: only mutual TLS has one to read)."""
    metadata = {
        key: value for key, value in (context.invocation_metadata() or ()) if isinstance(value, str)
    }
    return CallContext.start(
        "grpc",
        method=method,
        peer=context.peer(),
        timeout=context.time_remaining(),
        metadata=metadata,
        peer_identity=(
            peer_identity_from_auth_context(context.auth_context()) if identify_peer else None
        ),
    )


def _parse(method: Method, raw: bytes, call: CallContext) -> Message:
    try:
        return method.request_type.FromString(raw)
    except DecodeError as exc:
        error = GatewayError(
            Code.INVALID_ARGUMENT,
            f"the request is not a valid {method.descriptor.input_type.full_name}: {exc}",
        )
        # Rejected before any method ran; methods log their own outcome.
        log.info(
            "grpc request rejected",
            rpc=method.full_name,
            code=error.code.name,
            error=error.message,
            transport=call.transport,
            peer=call.peer,
        )
        raise error from None
