"""gateway.ingest.Ingestor: validation, rendering, limits and publishing on the in-memory broker."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from taskgateway_api.images.v1 import images_pb2

from gateway.broker import Broker, Envelope
from gateway.broker.memory import Definitions, MemoryBroker
from gateway.config import RouteSettings
from gateway.contracts.files import CONTRACT_FILES
from gateway.contracts.routing import build_route_table
from gateway.core.context import CallContext
from gateway.core.ingest import Ingestor, TaskRequest
from gateway.errors import Code, GatewayError

DEFINITIONS = Path(__file__).parents[2] / "deploy/rabbitmq/definitions.json"

AUDIO_ROUTE = RouteSettings("audio.generate", "audio.tasks", "audio-generation")

GENERATE = {"model": "m", "prompt": "a warrior", "image_name": "warrior"}


def definitions() -> Definitions:
    """The deployed topology plus an audio exchange and queue for the configured route."""
    raw = json.loads(DEFINITIONS.read_text(encoding="utf-8"))
    raw["exchanges"].append({"name": "audio.tasks", "vhost": "/", "type": "direct"})
    raw["queues"].append({"name": "audio.queue", "vhost": "/"})
    raw["bindings"].append(
        {
            "source": "audio.tasks",
            "vhost": "/",
            "destination": "audio.queue",
            "destination_type": "queue",
            "routing_key": "audio.generate",
        }
    )
    return Definitions.parse(raw)


class GatedBroker(Broker):
    """Publishes to a MemoryBroker only once `release` is set, counting the publishes."""

    description = "gated in-memory broker"

    def __init__(self, inner: MemoryBroker) -> None:
        super().__init__()
        self.inner = inner
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.calls = 0

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()

    async def exchange_exists(self, exchange: str) -> bool:
        return await self.inner.exchange_exists(exchange)

    async def publish(self, envelope: Envelope) -> None:
        self.calls += 1
        self.started.set()
        await self.release.wait()
        await self.inner.publish(envelope)


@pytest.fixture
async def broker() -> MemoryBroker:
    memory = MemoryBroker(definitions())
    await memory.start()
    return memory


def ingestor(
    broker: Broker, *, publish_timeout: float = 30.0, max_in_flight: int = 100
) -> Ingestor:
    routes = build_route_table(CONTRACT_FILES, [AUDIO_ROUTE])
    return Ingestor(
        routes,
        broker,
        app_id="gateway-tests",
        publish_timeout=publish_timeout,
        max_in_flight=max_in_flight,
    )


def queued(broker: MemoryBroker) -> dict[str, list[Envelope]]:
    """Every non-empty queue of the broker with its messages."""
    return {name: broker.messages(name) for name in broker.queues if broker.messages(name)}


def call(timeout: float | None = None, **metadata: str) -> CallContext:
    """A gRPC call that arrived now with `timeout` seconds to go, and the given metadata."""
    return CallContext.start(
        "grpc", method="/test/Call", peer="ipv4:127.0.0.1:1", timeout=timeout, metadata=metadata
    )


async def rejected(
    ingest: Ingestor, request: TaskRequest, timeout: float | None = None
) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        await ingest.submit(request, call(timeout))
    return caught.value


async def test_typed_and_json_payloads_publish_identical_bodies(broker: MemoryBroker) -> None:
    """A typed payload and the same payload as JSON produce bodies identical except task_id."""
    ingest = ingestor(broker)
    typed = images_pb2.GeneratePayload(model="m", prompt="猫", image_name="cat", width=512)

    first = await ingest.submit(TaskRequest("alice", "images.generate", typed), call())
    second = await ingest.submit(
        TaskRequest(
            "alice",
            "images.generate",
            {"model": "m", "prompt": "猫", "image_name": "cat", "width": 512},
        ),
        call(),
    )

    bodies = [message.body for message in broker.messages("images.queue")]
    assert len(bodies) == 2
    assert first.task_id != second.task_id
    assert bodies[0].replace(first.task_id.encode(), b"<id>") == bodies[1].replace(
        second.task_id.encode(), b"<id>"
    )
    assert json.loads(bodies[0]) == {
        "task_id": first.task_id,
        "user_id": "alice",
        "task_type": "images.generate",
        "payload": {"model": "m", "prompt": "猫", "image_name": "cat", "width": 512},
    }


async def test_lower_camel_json_key_is_accepted(broker: MemoryBroker) -> None:
    """A JSON payload may spell image_name as imageName; the body uses the proto name."""
    ingest = ingestor(broker)

    await ingest.submit(
        TaskRequest(
            "alice", "images.generate", {"model": "m", "prompt": "p", "imageName": "warrior"}
        ),
        call(),
    )

    (message,) = broker.messages("images.queue")
    assert json.loads(message.body)["payload"] == {
        "model": "m",
        "prompt": "p",
        "image_name": "warrior",
    }


async def test_unknown_payload_key_names_the_key(broker: MemoryBroker) -> None:
    """An unknown key in a typed route's JSON payload is INVALID_ARGUMENT naming payload.<key>."""
    error = await rejected(
        ingestor(broker), TaskRequest("alice", "images.generate", {**GENERATE, "colour": "red"})
    )

    assert error.code is Code.INVALID_ARGUMENT
    assert [v.field for v in error.violations] == ["payload.colour"]
    assert queued(broker) == {}


@pytest.mark.parametrize(
    "width",
    [
        "abc",
        1.5,
    ],
)
async def test_wrong_type_names_the_field(broker: MemoryBroker, width: object) -> None:
    """A value of the wrong type for a payload field is INVALID_ARGUMENT naming payload.width."""
    error = await rejected(
        ingestor(broker), TaskRequest("alice", "images.generate", {**GENERATE, "width": width})
    )

    assert error.code is Code.INVALID_ARGUMENT
    assert [v.field for v in error.violations] == ["payload.width"]
    assert queued(broker) == {}


async def test_failed_field_rules_are_named(broker: MemoryBroker) -> None:
    """Missing required fields of a JSON payload are INVALID_ARGUMENT naming each of them."""
    error = await rejected(
        ingestor(broker), TaskRequest("alice", "images.generate", {"model": "m"})
    )

    assert error.code is Code.INVALID_ARGUMENT
    assert [v.field for v in error.violations] == ["payload.prompt", "payload.image_name"]
    assert queued(broker) == {}


async def test_nan_in_untyped_payload_names_payload(broker: MemoryBroker) -> None:
    """NaN in an untyped route's payload cannot be JSON and is INVALID_ARGUMENT naming payload."""
    error = await rejected(
        ingestor(broker),
        TaskRequest("alice", "audio.generate", {"volume": float("nan")}),
    )

    assert error.code is Code.INVALID_ARGUMENT
    assert [v.field for v in error.violations] == ["payload"]
    assert queued(broker) == {}


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (TaskRequest("", "images.generate", GENERATE), "user_id"),
        (TaskRequest("alice:bob", "images.generate", GENERATE), "user_id"),
        (TaskRequest("alice", "images.generate", GENERATE, "k" * 257), "idempotency_key"),
        (TaskRequest("alice", "images.upscale", GENERATE), "task_type"),
    ],
)
async def test_bad_request_fields_are_rejected(
    broker: MemoryBroker, request_: TaskRequest, field: str
) -> None:
    """A bad user id, idempotency key or task type is INVALID_ARGUMENT naming that field."""
    error = await rejected(ingestor(broker), request_)

    assert error.code is Code.INVALID_ARGUMENT
    assert [v.field for v in error.violations] == [field]
    assert queued(broker) == {}


async def test_untyped_route_forwards_the_payload_untouched(broker: MemoryBroker) -> None:
    """A configured route without a payload type forwards the JSON object as it came."""
    payload = {"voiceName": "Ada", "nested": {"list": [1, 2.5, None, True]}, "text": "héllo"}
    ingest = ingestor(broker)

    accepted = await ingest.submit(TaskRequest("alice", "audio.generate", payload), call())

    (message,) = broker.messages("audio.queue")
    assert json.loads(message.body) == {
        "task_id": accepted.task_id,
        "user_id": "alice",
        "task_type": "audio.generate",
        "payload": payload,
    }
    assert message.exchange == "audio.tasks"
    assert message.routing_key == "audio.generate"
    assert accepted.task_key == f"alice:audio-generation:{accepted.task_id}"


async def test_envelope_properties_and_headers(broker: MemoryBroker) -> None:
    """The message carries message_id = task_id, type, content type, app_id and the headers."""
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

    accepted = await ingestor(broker).submit(
        TaskRequest("alice", "images.generate", GENERATE), call(traceparent=traceparent)
    )

    (message,) = broker.messages("images.queue")
    assert accepted.task_key == f"alice:image-generation:{accepted.task_id}"
    assert message.exchange == "images.tasks"
    assert message.routing_key == "images.generate"
    assert message.message_id == accepted.task_id
    assert message.type == "images.generate"
    assert message.content_type == "application/json"
    assert message.app_id == "gateway-tests"
    assert message.timestamp.tzinfo is not None
    assert dict(message.headers) == {"task_key": accepted.task_key, "traceparent": traceparent}


async def test_no_traceparent_header_without_one(broker: MemoryBroker) -> None:
    """Without an incoming traceparent the headers carry only the task key."""
    accepted = await ingestor(broker).submit(
        TaskRequest("alice", "images.generate", GENERATE), call()
    )

    (message,) = broker.messages("images.queue")
    assert dict(message.headers) == {"task_key": accepted.task_key}


async def test_broker_error_reaches_the_caller(broker: MemoryBroker) -> None:
    """A GatewayError from the broker is raised to the caller with its code."""
    await broker.close()

    error = await rejected(ingestor(broker), TaskRequest("alice", "images.generate", GENERATE))

    assert error.code is Code.UNAVAILABLE


async def test_in_flight_cap_refuses_a_second_publish(broker: MemoryBroker) -> None:
    """With max_in_flight=1 a second concurrent submit is RESOURCE_EXHAUSTED and not published."""
    gated = GatedBroker(broker)
    ingest = ingestor(gated, max_in_flight=1)
    first = asyncio.create_task(
        ingest.submit(TaskRequest("alice", "images.generate", GENERATE), call())
    )
    await gated.started.wait()

    error = await rejected(ingest, TaskRequest("bob", "images.generate", GENERATE))

    assert error.code is Code.RESOURCE_EXHAUSTED
    gated.release.set()
    accepted = await first
    assert gated.calls == 1
    assert [m.message_id for m in broker.messages("images.queue")] == [accepted.task_id]
    assert ingest.in_flight == 0


async def test_deadline_is_reported_and_publish_still_completes(broker: MemoryBroker) -> None:
    """A publish outlasting the deadline gives DEADLINE_EXCEEDED yet completes, and drain waits."""
    gated = GatedBroker(broker)
    ingest = ingestor(gated)

    error = await rejected(ingest, TaskRequest("alice", "images.generate", GENERATE), timeout=0.01)

    assert error.code is Code.DEADLINE_EXCEEDED
    assert "outcome is unknown" in error.message
    assert ingest.in_flight == 1
    assert await ingest.drain(timeout=0) == 1
    assert broker.messages("images.queue") == []

    draining = asyncio.create_task(ingest.drain(timeout=30))
    gated.release.set()

    assert await draining == 0
    assert ingest.in_flight == 0
    (message,) = broker.messages("images.queue")
    assert json.loads(message.body)["user_id"] == "alice"


@pytest.mark.parametrize("timeout", [0.0, 0.0005])
async def test_a_call_past_its_deadline_is_refused_before_anything_is_sent(
    broker: MemoryBroker, timeout: float
) -> None:
    """With no time left to get a confirm, DEADLINE_EXCEEDED says nothing was published."""
    gated = GatedBroker(broker)
    ingest = ingestor(gated)

    error = await rejected(ingest, TaskRequest("alice", "images.generate", GENERATE), timeout)

    assert error.code is Code.DEADLINE_EXCEEDED
    assert "nothing was published" in error.message
    assert gated.calls == 0
    assert ingest.in_flight == 0


async def test_configured_cap_bounds_the_publish(broker: MemoryBroker) -> None:
    """The configured publish timeout applies when the caller sent no deadline."""
    gated = GatedBroker(broker)
    ingest = ingestor(gated, publish_timeout=0)

    error = await rejected(ingest, TaskRequest("alice", "images.generate", GENERATE))

    assert error.code is Code.DEADLINE_EXCEEDED
    gated.release.set()
    assert await ingest.drain(timeout=30) == 0


async def test_concurrent_idempotent_submits_share_one_publish(broker: MemoryBroker) -> None:
    """Two concurrent submits with one idempotency key share one publish and one task key."""
    gated = GatedBroker(broker)
    ingest = ingestor(gated)
    request = TaskRequest("alice", "images.generate", GENERATE, idempotency_key="retry-1")
    first = asyncio.create_task(ingest.submit(request, call()))
    second = asyncio.create_task(ingest.submit(request, call()))
    await gated.started.wait()

    assert ingest.in_flight == 1
    gated.release.set()
    results = await asyncio.gather(first, second)

    assert gated.calls == 1
    assert results[0].task_key == results[1].task_key
    assert [m.message_id for m in broker.messages("images.queue")] == [results[0].task_id]


async def test_sequential_idempotent_submits_get_the_same_task_key(broker: MemoryBroker) -> None:
    """A retry after completion with the same idempotency key yields the same task key."""
    ingest = ingestor(broker)
    request = TaskRequest("alice", "images.generate", GENERATE, idempotency_key="retry-1")

    first = await ingest.submit(request, call())
    second = await ingest.submit(request, call())

    assert first.task_key == second.task_key
    assert [m.message_id for m in broker.messages("images.queue")] == [first.task_id] * 2


async def test_unexpected_error_becomes_internal(broker: MemoryBroker) -> None:
    """An exception that is not a GatewayError is answered as INTERNAL without its details."""

    class Broken(GatedBroker):
        async def publish(self, envelope: Envelope) -> None:
            raise RuntimeError("secret internals")

    error = await rejected(
        ingestor(Broken(broker)), TaskRequest("alice", "images.generate", GENERATE)
    )

    assert error.code is Code.INTERNAL
    assert "secret" not in error.message
