"""Traces: a server span per call, a producer span per publish, the trace carried into the
message. Spans collected with OpenTelemetry's in-memory exporter."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import aiohttp
import grpc
import pytest
import structlog.testing
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from taskgateway_api.images.v1 import images_pb2, images_pb2_grpc
from taskgateway_api.taskgateway.v1 import gateway_pb2, gateway_pb2_grpc

import gateway.app.server
from gateway.broker.memory import Definitions, MemoryBroker
from gateway.core.middleware import add_call_fields
from tests.conftest import make_settings, memory_broker

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
PAYLOAD = {"model": "m", "prompt": "p", "image_name": "n"}
GENERATE = images_pb2.GenerateRequest(user_id="u1", payload=images_pb2.GeneratePayload(**PAYLOAD))


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """Gateways started in the test trace into an in-memory exporter."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    chain = gateway.app.server.middlewares
    monkeypatch.setattr(
        gateway.app.server, "middlewares", lambda s, t=None, **hooks: chain(s, tracer, **hooks)
    )
    yield exporter
    provider.shutdown()


def by_kind(exporter: InMemorySpanExporter, kind: SpanKind) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.kind == kind]


def hex_ids(span: ReadableSpan) -> tuple[str, str]:
    context = span.get_span_context()
    assert context is not None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


@pytest.mark.parametrize("transport", ["grpc", "http"])
async def test_a_call_continues_the_trace_into_the_message(
    start_gateway: Any, spans: InMemorySpanExporter, transport: str
) -> None:
    """The server span continues the incoming trace, the producer span is its child, and the
    message's traceparent names the producer span."""
    broker = memory_broker()
    running = await start_gateway(make_settings(), broker)
    if transport == "grpc":
        answer = await images_pb2_grpc.ImagesServiceStub(running.channel).Generate(
            GENERATE, metadata=(("traceparent", TRACEPARENT),), timeout=10
        )
        task_key = answer.task_key
    else:
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"http://127.0.0.1:{running.gateway.http_port}/api/v1/images/generate",
                json={"user_id": "u1", "payload": PAYLOAD},
                headers={"traceparent": TRACEPARENT},
            ) as response,
        ):
            task_key = (await response.json())["task_key"]

    (server,) = by_kind(spans, SpanKind.SERVER)
    (producer,) = by_kind(spans, SpanKind.PRODUCER)
    (message,) = broker.messages("images.queue")
    task_id = task_key.rsplit(":", 1)[1]
    assert server.name == "images.v1.ImagesService/Generate"
    assert server.parent is not None
    assert format(server.parent.span_id, "016x") == PARENT_ID
    assert hex_ids(server)[0] == TRACE_ID
    assert dict(server.attributes or {})["gateway.transport"] == transport
    assert producer.parent is not None
    assert producer.parent.span_id == server.get_span_context().span_id
    assert producer.name == "publish images.tasks:images.generate"
    assert dict(producer.attributes or {}) == {
        "messaging.system": "rabbitmq",
        "messaging.operation.name": "publish",
        "messaging.operation.type": "send",
        "messaging.destination.name": "images.tasks:images.generate",
        "messaging.rabbitmq.destination.routing_key": "images.generate",
        "messaging.message.id": task_id,
    }
    trace_id, producer_id = hex_ids(producer)
    assert trace_id == TRACE_ID
    assert message.headers["traceparent"] == f"00-{TRACE_ID}-{producer_id}-01"


async def test_a_call_without_a_trace_starts_one(
    start_gateway: Any, spans: InMemorySpanExporter
) -> None:
    """With no incoming traceparent the server span starts a trace, carried into the message."""
    broker = memory_broker()
    running = await start_gateway(make_settings(), broker)

    await images_pb2_grpc.ImagesServiceStub(running.channel).Generate(GENERATE, timeout=10)

    (server,) = by_kind(spans, SpanKind.SERVER)
    (producer,) = by_kind(spans, SpanKind.PRODUCER)
    assert server.parent is None
    (message,) = broker.messages("images.queue")
    version, trace_id, span_id, _flags = message.headers["traceparent"].split("-")
    assert (version, trace_id, span_id) == ("00", *hex_ids(producer))


async def test_each_task_of_a_batch_gets_its_own_producer_span(
    start_gateway: Any, spans: InMemorySpanExporter
) -> None:
    """A batch of three: one server span, three producer spans under it, one per message."""
    broker = memory_broker()
    running = await start_gateway(make_settings(), broker)
    entry = gateway_pb2.TaskEntry()
    entry.typed.Pack(GENERATE)

    await gateway_pb2_grpc.TaskGatewayServiceStub(running.channel).PublishBatch(
        gateway_pb2.PublishBatchRequest(entries=[entry] * 3), timeout=10
    )

    (server,) = by_kind(spans, SpanKind.SERVER)
    producers = by_kind(spans, SpanKind.PRODUCER)
    assert len(producers) == 3
    assert {p.parent.span_id for p in producers if p.parent} == {server.get_span_context().span_id}
    carried = {m.headers["traceparent"].split("-")[2] for m in broker.messages("images.queue")}
    assert carried == {hex_ids(p)[1] for p in producers}


async def test_log_lines_carry_the_trace_and_span_ids(
    start_gateway: Any, spans: InMemorySpanExporter
) -> None:
    """The task's log line names the trace and the server span it belongs to."""
    running = await start_gateway(make_settings())

    with structlog.testing.capture_logs(
        [structlog.contextvars.merge_contextvars, add_call_fields]
    ) as logs:
        await images_pb2_grpc.ImagesServiceStub(running.channel).Generate(
            GENERATE, metadata=(("traceparent", TRACEPARENT),), timeout=10
        )

    (server,) = by_kind(spans, SpanKind.SERVER)
    (line,) = [line for line in logs if line["event"] == "task published"]
    assert (line["trace_id"], line["span_id"]) == hex_ids(server)


async def test_a_refused_publish_ends_its_span_in_error(
    start_gateway: Any, spans: InMemorySpanExporter
) -> None:
    """A message the broker returns as unroutable ends its producer span in error."""
    unbound = MemoryBroker(
        Definitions.parse(
            {
                "exchanges": [{"name": "images.tasks", "type": "direct"}],
                "queues": [],
                "bindings": [],
            }
        )
    )
    running = await start_gateway(make_settings(), unbound)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await images_pb2_grpc.ImagesServiceStub(running.channel).Generate(GENERATE, timeout=10)

    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    (producer,) = by_kind(spans, SpanKind.PRODUCER)
    assert producer.status.status_code == StatusCode.ERROR
    assert dict(producer.attributes or {})["error.type"] == "FAILED_PRECONDITION"
    (server,) = by_kind(spans, SpanKind.SERVER)
    assert dict(server.attributes or {})["rpc.grpc.status_code"] == 9
    assert server.status.status_code == StatusCode.UNSET, "the client's mistake, not the server's"
