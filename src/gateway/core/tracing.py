"""OpenTelemetry traces through the seam: a server span per call, a producer span per publish.

The server span continues the trace the call came with (its validated W3C `traceparent`), on
either transport. Each task the call publishes gets a PRODUCER span, named and attributed
after OpenTelemetry's messaging conventions for RabbitMQ, and the message carries *its*
`traceparent`/`tracestate`, so that a consumer continues the trace from the publish. Log
lines inside a call carry `trace_id` and `span_id`.

OpenTelemetry is an optional extra (`task-gateway[otel]`); without it (or with tracing off)
this middleware is not in the chain, and a well-formed incoming `traceparent` is forwarded
(version 00 as it came, a later version as its version-00 fields; `CallContext`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import structlog
from google.protobuf.message import Message
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

from gateway.contracts.routing import Route
from gateway.core.context import CallContext
from gateway.core.method import Method, StreamHandler, UnaryHandler
from gateway.core.middleware import Middleware, Outcome
from gateway.errors import Code, GatewayError

__all__ = ["Tracing"]


class Tracing(Middleware):
    def __init__(self, tracer: Tracer) -> None:
        self._tracer = tracer

    def unary(self, method: Method, handler: UnaryHandler) -> UnaryHandler:
        name = method.full_name.lstrip("/")

        async def traced(request: Any, call: CallContext) -> Message:
            with self._server_span(name, method, call):
                return await handler(request, call)

        return traced

    def stream(self, method: Method, handler: StreamHandler) -> StreamHandler:
        name = method.full_name.lstrip("/")

        async def traced(requests: AsyncIterator[Any], call: CallContext) -> AsyncIterator[Message]:
            with self._server_span(name, method, call):
                async for response in handler(requests, call):
                    yield response

        return traced

    def publishing(
        self, call: CallContext, route: Route, task_id: str, headers: dict[str, str]
    ) -> Outcome:
        destination = f"{route.exchange}:{route.routing_key}"
        span = self._tracer.start_span(
            f"publish {destination}",
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": "rabbitmq",
                "messaging.operation.name": "publish",
                "messaging.operation.type": "send",
                "messaging.destination.name": destination,
                "messaging.rabbitmq.destination.routing_key": route.routing_key,
                "messaging.message.id": task_id,
            },
        )
        # The message carries the publish span's context, replacing what the call came with.
        headers.pop("tracestate", None)
        propagate.inject(headers, context=trace.set_span_in_context(span))

        def ended(code: Code) -> None:
            if code is not Code.OK:
                _failed(span, code, code.name, server=False)
            span.end()

        return ended

    def _server_span(self, name: str, method: Method, call: CallContext) -> Any:
        parent = None
        if call.trace is not None:  # validated: only a well-formed W3C context is continued
            carrier = {"traceparent": call.trace.traceparent}
            if call.trace.tracestate:
                carrier["tracestate"] = call.trace.tracestate
            parent = propagate.extract(carrier)
        return _ServerSpan(
            self._tracer.start_as_current_span(
                name,
                context=parent,
                kind=SpanKind.SERVER,
                attributes={
                    "rpc.system": "grpc",
                    "rpc.service": method.service,
                    "rpc.method": method.name,
                    "network.transport": "tcp",
                    "gateway.transport": call.transport,
                },
                record_exception=False,
                set_status_on_exception=False,  # _failed decides: a client's mistake is no error
            )
        )


class _ServerSpan:
    """The current server span, with its ids bound to every log line of the call, and the
    status the call ended with recorded on it."""

    def __init__(self, manager: Any) -> None:
        self._manager = manager
        self._span: Any = None
        self._logged: Any = None

    def __enter__(self) -> trace.Span:
        span: trace.Span = self._manager.__enter__()
        self._span = span
        ids = span.get_span_context()
        self._logged = structlog.contextvars.bound_contextvars(
            trace_id=format(ids.trace_id, "032x"), span_id=format(ids.span_id, "016x")
        )
        self._logged.__enter__()
        return span

    def __exit__(self, *exc_info: Any) -> Any:
        error = exc_info[1]
        if error is None:
            self._span.set_attribute("rpc.grpc.status_code", int(Code.OK))
        elif isinstance(error, GatewayError):
            _failed(self._span, error.code, error.message, server=True)
        elif isinstance(error, Exception):  # not a cancellation, nor a stream closed early
            _failed(self._span, Code.INTERNAL, "internal error", server=True)
        self._logged.__exit__(*exc_info)
        return self._manager.__exit__(*exc_info)


def _failed(span: trace.Span, code: Code, description: str, *, server: bool) -> None:
    """Record a failure: a server span is in error only for the server's trouble (the client's
    mistakes are not the server's), a producer span for any publish that did not land."""
    if server:
        span.set_attribute("rpc.grpc.status_code", int(code))
        if code.row.log_level == "info":
            return
    else:
        span.set_attribute("error.type", code.name)
    span.set_status(Status(StatusCode.ERROR, description))
