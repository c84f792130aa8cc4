"""The one seam every call goes through, whatever transport it came by.

A middleware is one concern (the log context today; authentication, quotas, metrics and
tracing are written the same way) applied to every method once, at start-up: `apply` wraps
each method's handler in the middlewares' order, the first outermost. gRPC and the HTTP shim
both call the wrapped handler, so a middleware is written once and holds for both. What is
not a method of the gateway (health, reflection, /docs, /openapi.json) stays outside.

A middleware overrides `unary`, `stream` or both; each returns the handler it was given when
it has nothing to add for that method, so a method pays only for what applies to it.

A call may carry many tasks (a batch, a stream), and some concerns are about each task: who
may publish this task type, how many tasks a client may send, what became of each task. For
those, the `Ingestor` calls three task hooks of every middleware that overrides them:
`admit` (before a task is sent: raise to refuse it, and only it), `publishing` (as it is sent:
add message headers, and get told its outcome) and `settled` (its outcome, once, whether it
was sent or not). `visible` says which task types a caller may know of (the catalog).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable, MutableMapping, Sequence
from contextvars import ContextVar
from typing import Any

from google.protobuf.message import Message

from gateway.contracts.routing import Route
from gateway.core.context import CallContext
from gateway.core.method import Method, StreamHandler, UnaryHandler
from gateway.errors import Code

__all__ = [
    "CURRENT_CALL",
    "LogContext",
    "Middleware",
    "Outcome",
    "add_call_fields",
    "apply",
    "call_fields",
    "visibility",
]


# Told the code a published task ended with (OK when confirmed).
Outcome = Callable[[Code], None]


class Middleware:
    """One concern around every method. The base class passes calls through unchanged."""

    def unary(self, method: Method, handler: UnaryHandler) -> UnaryHandler:
        return handler

    def stream(self, method: Method, handler: StreamHandler) -> StreamHandler:
        return handler

    def admit(self, call: CallContext, route: Route, user_id: str) -> None:
        """A valid task for `route` and `user_id` is about to be published: raise GatewayError
        to refuse it (nothing is sent)."""

    def publishing(
        self, call: CallContext, route: Route, task_id: str, headers: dict[str, str]
    ) -> Outcome | None:
        """The task is being sent with `headers`, which may be added to; return a callable to
        be told its outcome, or None."""
        return None

    def settled(self, call: CallContext, task_type: str, code: Code) -> None:
        """A task's outcome: `task_type` as routed, or `_unknown` for one the gateway does not
        route; `code` OK for a confirmed task."""

    def visible(self, call: CallContext, task_type: str) -> bool:
        """Whether the caller may know of `task_type` (the catalog, the task types an error
        lists); all of them unless a middleware restricts them."""
        return True

    def overrides(self, hook: str) -> bool:
        """Whether this middleware has something to do at `hook` (so callers may skip it)."""
        return getattr(type(self), hook) is not getattr(Middleware, hook)


def visibility(middlewares: Sequence[Middleware]) -> Callable[[CallContext, str], bool] | None:
    """Whether a caller may know of a task type, by every middleware's `visible`; None when no
    middleware restricts it."""
    hooks = [m.visible for m in middlewares if m.overrides("visible")]
    if not hooks:
        return None
    return lambda call, task_type: all(hook(call, task_type) for hook in hooks)


def apply(method: Method, middlewares: Sequence[Middleware]) -> Method:
    """The method with its handler wrapped by the middlewares, the first one outermost."""
    handler = method.handler
    for middleware in reversed(middlewares):
        if method.streaming:
            handler = middleware.stream(method, handler)
        else:
            handler = middleware.unary(method, handler)
    return dataclasses.replace(method, handler=handler)


# The call the running code serves: what every log line of it names (see add_call_fields).
CURRENT_CALL: ContextVar[CallContext | None] = ContextVar("gateway_current_call", default=None)


class LogContext(Middleware):
    """Every log line of a call carries its transport, its peer and the client's request id.

    It only marks the call as the current one (one context variable); `add_call_fields`, a
    structlog processor, reads it when a line is actually written, so a call that logs
    nothing (the common case above info) pays nothing for its fields.
    """

    def unary(self, method: Method, handler: UnaryHandler) -> UnaryHandler:
        async def logged(request: Any, call: CallContext) -> Message:
            token = CURRENT_CALL.set(call)
            try:
                return await handler(request, call)
            finally:
                CURRENT_CALL.reset(token)

        return logged

    def stream(self, method: Method, handler: StreamHandler) -> StreamHandler:
        async def logged(requests: AsyncIterator[Any], call: CallContext) -> AsyncIterator[Message]:
            token = CURRENT_CALL.set(call)
            try:
                async for response in handler(requests, call):
                    yield response
            finally:
                CURRENT_CALL.reset(token)

        return logged


def add_call_fields(
    logger: object, method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: the current call's transport, peer, request id and trace id, for
    the keys the line does not set itself."""
    call = CURRENT_CALL.get()
    if call is not None:
        for key, value in call_fields(call).items():
            event.setdefault(key, value)
    return event


def call_fields(call: CallContext) -> dict[str, str]:
    """What every log line of the call names: its transport, peer, request id and trace id."""
    fields = {"transport": call.transport, "peer": call.peer}
    if call.request_id:
        fields["request_id"] = call.request_id
    if call.trace is not None:  # the caller's trace; a tracing middleware binds its own span's
        fields["trace_id"] = call.trace.traceparent[3:35]
    return fields
