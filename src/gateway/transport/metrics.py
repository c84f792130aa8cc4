"""Metrics of the transports: gRPC (go-grpc-middleware's names) and HTTP (OpenTelemetry's).

Every RPC the gRPC server answers is counted, the gateway's methods and grpc's own health and
reflection alike; every HTTP request by its route template. The `/metrics` endpoint's scrape
is here too: the whole instance, all workers, whichever answers (prometheus-client's
multiprocess mode, when `PROMETHEUS_MULTIPROC_DIR` is set: see gateway.app.metrics_dir).
"""

from __future__ import annotations

import asyncio
import inspect
import os
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

import grpc
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)

from gateway.errors import Code

__all__ = [
    "CONTENT_TYPE",
    "GRPC_HANDLED",
    "GRPC_HANDLING_SECONDS",
    "GRPC_RECEIVED",
    "GRPC_SENT",
    "GRPC_STARTED",
    "HTTP_DURATION",
    "UNMATCHED_ROUTE",
    "go_code",
    "grpc_type",
    "initialise_grpc",
    "metered",
    "scrape",
]

# No *_created series: the multiprocess mode has none either, and they double the series.
disable_created_metrics()  # type: ignore[no-untyped-call]

CONTENT_TYPE = CONTENT_TYPE_LATEST
# The http_route of a request no route matched: never the raw path a client sent.
UNMATCHED_ROUTE = "_unmatched"

# go-grpc-middleware's (and Prometheus') default buckets.
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_GRPC_LABELS = ("grpc_type", "grpc_service", "grpc_method")

GRPC_STARTED = Counter("grpc_server_started_total", "RPCs started on the server.", _GRPC_LABELS)
GRPC_HANDLED = Counter(
    "grpc_server_handled_total",
    "RPCs completed on the server, regardless of success or failure.",
    (*_GRPC_LABELS, "grpc_code"),
)
GRPC_RECEIVED = Counter(
    "grpc_server_msg_received_total", "RPC stream messages received on the server.", _GRPC_LABELS
)
GRPC_SENT = Counter(
    "grpc_server_msg_sent_total", "gRPC stream messages sent by the server.", _GRPC_LABELS
)
GRPC_HANDLING_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "Histogram of response latency (seconds) of gRPC that had been application-level "
    "handled by the server.",
    _GRPC_LABELS,
    buckets=_BUCKETS,
)
HTTP_DURATION = Histogram(
    "http_server_request_duration_seconds",
    "Duration of HTTP server requests.",
    ("http_request_method", "http_route", "http_response_status_code"),
    buckets=_BUCKETS,
)


def go_code(code: Code) -> str:
    """A gRPC code as grpc-go's codes.Code.String() spells it: OK, InvalidArgument, ..."""
    if code is Code.OK:
        return "OK"
    return "".join(word.capitalize() for word in code.name.split("_"))


def initialise_grpc(methods: Iterable[tuple[str, str, str]]) -> None:
    """Series at 0 for each (grpc_type, service, method), every code of it included, so that
    rates and ratios exist before the first call."""
    for labels in methods:
        GRPC_STARTED.labels(*labels)
        GRPC_RECEIVED.labels(*labels)
        GRPC_SENT.labels(*labels)
        GRPC_HANDLING_SECONDS.labels(*labels)
        for code in Code:
            GRPC_HANDLED.labels(*labels, go_code(code))


def scrape() -> bytes:
    """The whole instance in Prometheus' text format: every worker's metrics, when several."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return bytes(generate_latest(registry))
    return bytes(generate_latest(REGISTRY))


_GRPC_TYPES = {
    "unary_unary": "unary",
    "unary_stream": "server_stream",
    "stream_unary": "client_stream",
    "stream_stream": "bidi_stream",
}


def grpc_type(handler: grpc.RpcMethodHandler[Any, Any]) -> str:
    """go-grpc-middleware's grpc_type of a method handler: unary, server_stream, ..."""
    for behaviour, kind in _GRPC_TYPES.items():
        if getattr(handler, behaviour) is not None:
            return kind
    raise ValueError("a method handler with no behaviour")


def metered(
    service: str, method: str, handler: grpc.RpcMethodHandler[Any, Any]
) -> grpc.RpcMethodHandler[Any, Any]:
    """The handler, counted and timed as go-grpc-middleware's server metrics count it."""
    kind = grpc_type(handler)
    labels = (kind, service, method)
    meter = _Meter(labels)
    codec = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(_unary(meter, handler.unary_unary), **codec)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            _unary_stream(meter, handler.unary_stream), **codec
        )
    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(
            _stream_stream(meter, handler.stream_stream), **codec
        )
    raise ValueError(f"{service}/{method}: a {kind} method is not served by the gateway")


class _Meter:
    """The series of one method, looked up once."""

    __slots__ = ("handled", "received", "seconds", "sent", "started")

    def __init__(self, labels: tuple[str, str, str]) -> None:
        self.started = GRPC_STARTED.labels(*labels)
        self.received = GRPC_RECEIVED.labels(*labels)
        self.sent = GRPC_SENT.labels(*labels)
        self.seconds = GRPC_HANDLING_SECONDS.labels(*labels)
        self.handled = {code: GRPC_HANDLED.labels(*labels, go_code(code)) for code in Code}

    def ended(self, started: float, code: Code) -> None:
        self.handled[code].inc()
        self.seconds.observe(time.perf_counter() - started)


def _outcome(error: BaseException, context: grpc.aio.ServicerContext[Any, Any]) -> Code:
    """The status an RPC ended with, from how its handler ended."""
    if isinstance(error, asyncio.CancelledError):
        return Code.CANCELLED
    if isinstance(error, grpc.aio.AbortError):  # context.abort: the code is set on the context
        status = context.code()
        return Code(status.value[0]) if status is not None else Code.UNKNOWN
    return Code.UNKNOWN  # what grpc answers for an exception a handler let escape


def _unary(meter: _Meter, behaviour: Any) -> Any:
    """A unary call; or a handler that writes its responses with context.write and returns
    None (grpc's health Watch): timed and counted the same, what it writes not seen here."""

    async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        started = time.perf_counter()
        meter.started.inc()
        meter.received.inc()
        try:
            response = await behaviour(request, context)
        except BaseException as error:
            meter.ended(started, _outcome(error, context))
            raise
        if response is not None:
            meter.sent.inc()
        meter.ended(started, Code.OK)
        return response

    return unary


def _unary_stream(meter: _Meter, behaviour: Any) -> Any:
    if not inspect.isasyncgenfunction(behaviour):
        return _unary(meter, behaviour)  # a writer (context.write), not a generator

    async def unary_stream(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        started = time.perf_counter()
        meter.started.inc()
        meter.received.inc()
        try:
            async for response in behaviour(request, context):
                meter.sent.inc()
                yield response
        except BaseException as error:
            meter.ended(started, _outcome(error, context))
            raise
        meter.ended(started, Code.OK)

    return unary_stream


def _stream_stream(meter: _Meter, behaviour: Any) -> Any:
    async def stream_stream(
        requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        started = time.perf_counter()
        meter.started.inc()

        async def counted() -> AsyncIterator[Any]:
            async for request in requests:
                meter.received.inc()
                yield request

        try:
            async for response in behaviour(counted(), context):
                meter.sent.inc()
                yield response
        except BaseException as error:
            meter.ended(started, _outcome(error, context))
            raise
        meter.ended(started, Code.OK)

    return stream_stream
