"""The one seam every call goes through, whatever transport it came by.

A middleware is one concern (the log context today; authentication, quotas, metrics and
tracing are written the same way) applied to every method once, at start-up: `apply` wraps
each method's handler in the middlewares' order, the first outermost. gRPC and the HTTP shim
both call the wrapped handler, so a middleware is written once and holds for both. What is
not a method of the gateway (health, reflection, /docs, /openapi.json) stays outside.

A middleware overrides `unary`, `stream` or both; each returns the handler it was given when
it has nothing to add for that method, so a method pays only for what applies to it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Sequence
from typing import Any

import structlog
from google.protobuf.message import Message

from gateway.core.context import CallContext
from gateway.core.method import Method, StreamHandler, UnaryHandler

__all__ = ["LogContext", "Middleware", "apply"]


class Middleware:
    """One concern around every method. The base class passes calls through unchanged."""

    def unary(self, method: Method, handler: UnaryHandler) -> UnaryHandler:
        return handler

    def stream(self, method: Method, handler: StreamHandler) -> StreamHandler:
        return handler


def apply(method: Method, middlewares: Sequence[Middleware]) -> Method:
    """The method with its handler wrapped by the middlewares, the first one outermost."""
    handler = method.handler
    for middleware in reversed(middlewares):
        if method.streaming:
            handler = middleware.stream(method, handler)
        else:
            handler = middleware.unary(method, handler)
    return dataclasses.replace(method, handler=handler)


class LogContext(Middleware):
    """Every log line of a call carries its transport, its peer and the client's request id."""

    def unary(self, method: Method, handler: UnaryHandler) -> UnaryHandler:
        async def logged(request: Any, call: CallContext) -> Message:
            with structlog.contextvars.bound_contextvars(**_fields(call)):
                return await handler(request, call)

        return logged

    def stream(self, method: Method, handler: StreamHandler) -> StreamHandler:
        async def logged(requests: AsyncIterator[Any], call: CallContext) -> AsyncIterator[Message]:
            with structlog.contextvars.bound_contextvars(**_fields(call)):
                async for response in handler(requests, call):
                    yield response

        return logged


def _fields(call: CallContext) -> dict[str, str]:
    fields = {"transport": call.transport, "peer": call.peer}
    if call.request_id:
        fields["request_id"] = call.request_id
    return fields
