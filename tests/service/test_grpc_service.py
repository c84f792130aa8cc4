"""The gRPC server's own behaviour, on brokers the test controls: deadlines, caps, shutdown."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
import structlog.testing
from grpc_health.v1 import health_pb2, health_pb2_grpc
from taskgateway_api.images.v1 import images_pb2, images_pb2_grpc

from gateway.broker import Broker, Envelope
from gateway.config import RouteSettings
from tests.conftest import make_settings, memory_broker, replace_settings
from tests.support.waits import hang_guard

REQUEST = images_pb2.GenerateRequest(
    user_id="u1", payload=images_pb2.GeneratePayload(model="m", prompt="p", image_name="n")
)


class HeldBroker(Broker):
    """Confirms only when the test releases it, or raises what the test says."""

    description = "held broker"

    def __init__(self, error: BaseException | None = None) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.arrived = asyncio.Event()
        self.published: list[Envelope] = []
        self.error = error
        self.waiting = 0  # publishes held right now
        self.most_waiting = 0
        self._changed = asyncio.Condition()

    async def start(self) -> None:
        self._set_connected(True)

    async def close(self) -> None:
        self._set_connected(False)

    async def exchange_exists(self, exchange: str) -> bool:
        return True

    async def publish(self, envelope: Envelope) -> None:
        self.arrived.set()
        if self.error is not None:
            raise self.error
        async with self._changed:
            self.waiting += 1
            self.most_waiting = max(self.most_waiting, self.waiting)
            self._changed.notify_all()
        await self.release.wait()
        self.waiting -= 1
        self.published.append(envelope)

    async def until_arrived(self) -> None:
        """Return once a publish has reached the broker."""
        async with hang_guard("a publish reached the held broker"):
            await self.arrived.wait()

    async def until_waiting(self, count: int) -> None:
        """Return once `count` publishes are held."""
        async with hang_guard(f"{count} publishes held by the broker"), self._changed:
            await self._changed.wait_for(lambda: self.waiting >= count)


async def test_publish_slower_than_the_cap_is_deadline_exceeded(start_gateway: Any) -> None:
    """A confirm later than broker.publish_timeout_seconds is DEADLINE_EXCEEDED, outcome unknown."""
    broker = HeldBroker()
    settings = replace_settings(make_settings(), "broker", publish_timeout_seconds=0.2)
    running = await start_gateway(settings, broker)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await images_pb2_grpc.ImagesServiceStub(running.channel).Generate(REQUEST)

    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "outcome is unknown" in caught.value.details()
    assert "idempotency_key" in caught.value.details()
    broker.release.set()
    assert await running.gateway.ingestor.drain(5) == 0
    assert len(broker.published) == 1, "the shielded publish still completed"


async def test_in_flight_cap_answers_resource_exhausted(start_gateway: Any) -> None:
    """Past broker.max_in_flight waiting publishes, a request is RESOURCE_EXHAUSTED at once."""
    broker = HeldBroker()
    settings = replace_settings(make_settings(), "broker", max_in_flight=1)
    running = await start_gateway(settings, broker)
    stub = images_pb2_grpc.ImagesServiceStub(running.channel)
    first = asyncio.ensure_future(stub.Generate(REQUEST))
    await broker.until_arrived()

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Generate(REQUEST)

    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "broker.max_in_flight" in caught.value.details()
    broker.release.set()
    assert (await first).task_key.startswith("u1:image-generation:")


async def test_unexpected_error_is_internal_without_details(start_gateway: Any) -> None:
    """A bug below the handler is answered INTERNAL, its text kept out of the reply."""
    running = await start_gateway(make_settings(), HeldBroker(error=RuntimeError("secret dsn")))

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await images_pb2_grpc.ImagesServiceStub(running.channel).Generate(REQUEST)

    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in caught.value.details()
    assert "internal error" in caught.value.details()


async def test_route_to_missing_exchange_is_failed_precondition(start_gateway: Any) -> None:
    """A configured route whose exchange the broker lacks is FAILED_PRECONDITION naming it."""
    from taskgateway_api.taskgateway.v1 import gateway_pb2, gateway_pb2_grpc

    settings = make_settings(
        routes=(
            RouteSettings(task_type="audio.generate", exchange="audio.tasks", service_name="audio"),
        )
    )
    broker = memory_broker()
    running = await start_gateway(settings, broker)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gateway_pb2_grpc.TaskGatewayServiceStub(running.channel).Publish(
            gateway_pb2.PublishRequest(user_id="u", task_type="audio.generate")
        )

    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "'audio.tasks'" in caught.value.details()
    assert "'audio.generate'" in caught.value.details()
    assert all(not queue.messages for queue in broker.queues.values())


async def test_graceful_shutdown_lets_in_flight_publish_finish(start_gateway: Any) -> None:
    """On stop, health turns NOT_SERVING, new calls are refused, the call in flight gets OK."""
    broker = HeldBroker()
    running = await start_gateway(make_settings(), broker)
    stub = images_pb2_grpc.ImagesServiceStub(running.channel)
    in_flight = asyncio.ensure_future(stub.Generate(REQUEST))
    await broker.until_arrived()
    health = health_pb2_grpc.HealthStub(running.channel).Watch(health_pb2.HealthCheckRequest())
    assert (await health.read()).status == health_pb2.HealthCheckResponse.SERVING

    stopping = asyncio.ensure_future(running.gateway.stop(grace=5.0))
    assert (await health.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
    health.cancel()  # an open Watch would hold the server for the whole grace period
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.Generate(REQUEST, timeout=2)
    broker.release.set()

    assert (await in_flight).task_key.startswith("u1:image-generation:")
    await stopping
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert len(broker.published) == 1
    assert not broker.connected, "the broker connection is closed after the drain"


async def test_each_request_is_logged_once_without_payload(start_gateway: Any) -> None:
    """One log event per request, with key, type, exchange, code and latency, and no payload."""
    running = await start_gateway(make_settings(), memory_broker())
    stub = images_pb2_grpc.ImagesServiceStub(running.channel)
    secret = images_pb2.GeneratePayload(model="m", prompt="very private words", image_name="n")

    with structlog.testing.capture_logs() as logs:
        ok = await stub.Generate(images_pb2.GenerateRequest(user_id="u1", payload=secret))
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Generate(images_pb2.GenerateRequest(user_id="", payload=secret))

    outcomes = [e for e in logs if e["event"] in ("task published", "task not published")]
    assert [(e["code"], e.get("task_key")) for e in outcomes] == [
        ("OK", ok.task_key),
        ("INVALID_ARGUMENT", None),
    ]
    assert outcomes[0]["exchange"] == "images.tasks"
    assert all(e["task_type"] == "images.generate" for e in outcomes)
    assert all(isinstance(e["latency_ms"], float) for e in outcomes)
    assert "very private words" not in repr(outcomes)


async def test_stream_stops_reading_while_its_window_is_full(start_gateway: Any) -> None:
    """With every confirm held, a stream reads no more than grpc.stream_window tasks."""
    from taskgateway_api.taskgateway.v1 import gateway_pb2, gateway_pb2_grpc

    broker = HeldBroker()
    settings = replace_settings(make_settings(), "grpc", stream_window=4)
    running = await start_gateway(settings, broker)
    publish = gateway_pb2.PublishRequest(user_id="w", task_type="images.generate")
    publish.payload.update({"model": "m", "prompt": "p", "image_name": "n"})
    request = gateway_pb2.PublishStreamRequest(entry=gateway_pb2.TaskEntry(publish=publish))
    stream = gateway_pb2_grpc.TaskGatewayServiceStub(running.channel).PublishStream()
    for _ in range(10):
        await stream.write(request)
    await stream.done_writing()
    await broker.until_waiting(4)
    broker.release.set()

    results = [r async for response in stream for r in response.results]

    assert broker.most_waiting == 4, "never more than the window awaited a confirm"
    assert sorted(r.index for r in results) == list(range(10))
    assert len(broker.published) == 10
