"""Publishing to the real RabbitMQ: what lands in the queues, and what never does."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from taskgateway_api.images.v1 import images_pb2, images_pb2_grpc
from taskgateway_api.taskgateway.v1 import gateway_pb2, gateway_pb2_grpc
from taskgateway_api.videos.v1 import videos_pb2, videos_pb2_grpc

from gateway.config import RouteSettings
from tests.conftest import Topology, make_settings, replace_settings, wait_connected

LEGACY_EXAMPLE = {
    "user_id": "12345",
    "task_type": "images.generate",
    "payload": {
        "model": "openrouter::google/gemini-3.1-flash-image-preview",
        "prompt": "post-apocalyptic warrior standing in a ruined city",
        "image_name": "warrior",
    },
}


def _typed_calls() -> list[tuple[str, Any, Any, str, dict[str, Any]]]:
    """(task type, stub class, request, queue, payload as proto JSON) for every typed RPC."""
    image = {"model": "m1", "prompt": "a red fox", "image_name": "fox", "width": 512}
    edit = {"model": "m1", "prompt": "add snow", "source_image_name": "fox", "image_name": "fox2"}
    video = {"model": "v1", "prompt": "waves", "video_name": "sea", "duration_seconds": 5}
    animate = {"model": "v1", "source_image_name": "fox", "video_name": "fox-run"}
    return [
        (
            "images.generate",
            lambda ch: images_pb2_grpc.ImagesServiceStub(ch).Generate,
            images_pb2.GenerateRequest(
                user_id="u1", payload=json_format.ParseDict(image, images_pb2.GeneratePayload())
            ),
            "images.queue",
            image,
        ),
        (
            "images.edit",
            lambda ch: images_pb2_grpc.ImagesServiceStub(ch).Edit,
            images_pb2.EditRequest(
                user_id="u1", payload=json_format.ParseDict(edit, images_pb2.EditPayload())
            ),
            "images.queue",
            edit,
        ),
        (
            "videos.generate",
            lambda ch: videos_pb2_grpc.VideosServiceStub(ch).Generate,
            videos_pb2.GenerateRequest(
                user_id="u1", payload=json_format.ParseDict(video, videos_pb2.GeneratePayload())
            ),
            "videos.queue",
            video,
        ),
        (
            "videos.animate",
            lambda ch: videos_pb2_grpc.VideosServiceStub(ch).Animate,
            videos_pb2.AnimateRequest(
                user_id="u1", payload=json_format.ParseDict(animate, videos_pb2.AnimatePayload())
            ),
            "videos.queue",
            animate,
        ),
    ]


def _assert_legacy_message(
    message: Any, task_key: str, user_id: str, task_type: str, payload: dict[str, Any]
) -> None:
    """The body is the legacy PublishMessage; the properties are those the README lists."""
    key_user, service, task_id = task_key.split(":")
    assert key_user == user_id
    assert service == (
        "image-generation" if task_type.startswith("images.") else "video-generation"
    )
    assert uuid.UUID(task_id)
    body = json.loads(message.body)
    assert list(body) == ["task_id", "user_id", "task_type", "payload"]
    assert body == {
        "task_id": task_id,
        "user_id": user_id,
        "task_type": task_type,
        "payload": payload,
    }
    assert message.routing_key == task_type
    assert message.delivery_mode == 2
    assert message.message_id == task_id
    assert message.content_type == "application/json"
    assert message.type == task_type
    assert message.app_id == "task-gateway"
    assert message.headers["task_key"] == task_key
    assert abs(message.timestamp.replace(tzinfo=UTC) - datetime.now(UTC)) < timedelta(minutes=1)


@pytest.mark.parametrize(
    ("task_type", "stub", "request_message", "queue", "payload"),
    _typed_calls(),
    ids=lambda value: value if isinstance(value, str) and "." in value else "",
)
async def test_typed_rpc_puts_one_legacy_message_in_its_queue(
    gateway: Any,
    topology: Topology,
    task_type: str,
    stub: Any,
    request_message: Any,
    queue: str,
    payload: dict[str, Any],
) -> None:
    """Each typed RPC publishes exactly one message, legacy body and properties, to its queue."""
    response = await stub(gateway.channel)(request_message)

    landed = await topology.drain_all()
    assert {q: len(m) for q, m in landed.items() if m} == {queue: 1}
    _assert_legacy_message(landed[queue][0], response.task_key, "u1", task_type, payload)


async def test_legacy_publish_example_lands_in_images_queue(
    gateway: Any, topology: Topology
) -> None:
    """The legacy README's request through Publish lands in images.queue with the legacy body."""
    request = json_format.ParseDict(LEGACY_EXAMPLE, gateway_pb2.PublishRequest())
    response = await gateway_pb2_grpc.TaskGatewayServiceStub(gateway.channel).Publish(request)

    landed = await topology.drain_all()
    assert [len(landed[q]) for q in ("images.queue", "videos.queue")] == [1, 0]
    _assert_legacy_message(
        landed["images.queue"][0],
        response.task_key,
        "12345",
        "images.generate",
        LEGACY_EXAMPLE["payload"],
    )


async def test_publish_and_typed_rpc_publish_identical_messages(
    gateway: Any, topology: Topology
) -> None:
    """The generic Publish (lowerCamel JSON keys) and the typed RPC differ only in task_id."""
    payload = {"model": "m", "prompt": "p", "image_name": "n", "seed": 42}
    typed = await images_pb2_grpc.ImagesServiceStub(gateway.channel).Generate(
        images_pb2.GenerateRequest(user_id="7", payload=images_pb2.GeneratePayload(**payload))
    )
    generic_request = gateway_pb2.PublishRequest(user_id="7", task_type="images.generate")
    generic_request.payload.update({"model": "m", "prompt": "p", "imageName": "n", "seed": 42})
    generic = await gateway_pb2_grpc.TaskGatewayServiceStub(gateway.channel).Publish(
        generic_request
    )

    first, second = [json.loads(m.body) for m in await topology.drain("images.queue")]
    assert first["task_id"] == typed.task_key.rsplit(":", 1)[1]
    assert second["task_id"] == generic.task_key.rsplit(":", 1)[1]
    assert first["task_id"] != second["task_id"]
    assert {**first, "task_id": None} == {**second, "task_id": None}
    assert first["payload"] == payload


async def test_configured_route_forwards_payload_untouched(
    start_gateway: Any, rabbitmq_url: str, topology: Topology
) -> None:
    """A task type routed by configuration publishes its free-form payload as sent."""
    await topology.bind("images.queue", "images.tasks", "images.upscale")
    settings = make_settings(
        rabbitmq_url,
        routes=(
            RouteSettings(
                task_type="images.upscale", exchange="images.tasks", service_name="upscaler"
            ),
        ),
    )
    running = await start_gateway(settings)
    await wait_connected(running.gateway)
    payload = {"factor": 4, "ratio": 0.5, "tags": ["a", 1], "nested": {"ok": True, "none": None}}
    request = gateway_pb2.PublishRequest(user_id="9", task_type="images.upscale")
    request.payload.update(payload)

    response = await gateway_pb2_grpc.TaskGatewayServiceStub(running.channel).Publish(request)

    (message,) = await topology.drain("images.queue")
    assert response.task_key.startswith("9:upscaler:")
    assert json.loads(message.body)["payload"] == payload
    assert b'"factor":4' in message.body


def _bad_request_fields(error: grpc.aio.AioRpcError) -> list[str]:
    status = rpc_status.from_call(error)
    assert status is not None, "the error carries a google.rpc.Status"
    fields = []
    for detail in status.details:
        bad_request = error_details_pb2.BadRequest()
        assert detail.Unpack(bad_request)
        fields += [v.field for v in bad_request.field_violations]
    return fields


@pytest.mark.parametrize(
    ("request_json", "field", "words"),
    [
        (
            {**LEGACY_EXAMPLE, "task_type": "images.upscale"},
            "task_type",
            ["images.upscale", "images.generate", "videos.animate"],
        ),
        ({**LEGACY_EXAMPLE, "user_id": ""}, "user_id", ["must not be empty"]),
        ({**LEGACY_EXAMPLE, "user_id": "a:b"}, "user_id", ["':'"]),
        ({**LEGACY_EXAMPLE, "user_id": "a\nb"}, "user_id", ["control characters"]),
        ({**LEGACY_EXAMPLE, "user_id": "x" * 129}, "user_id", ["128"]),
        (
            {**LEGACY_EXAMPLE, "payload": {**LEGACY_EXAMPLE["payload"], "imageNam": "x"}},
            "payload.imageNam",
            ["unknown field", "image_name"],
        ),
        (
            {**LEGACY_EXAMPLE, "payload": {**LEGACY_EXAMPLE["payload"], "width": "wide"}},
            "payload.width",
            ["width"],
        ),
        (
            {**LEGACY_EXAMPLE, "payload": {"model": "m", "image_name": "n"}},
            "payload.prompt",
            ["required"],
        ),
    ],
    ids=[
        "unknown-task-type",
        "empty-user",
        "colon-user",
        "control-user",
        "long-user",
        "unknown-field",
        "wrong-type",
        "missing-field",
    ],
)
async def test_bad_publish_is_invalid_argument_and_publishes_nothing(
    gateway: Any, topology: Topology, request_json: dict[str, Any], field: str, words: list[str]
) -> None:
    """Each bad request is INVALID_ARGUMENT naming the field, and no queue gets a message."""
    request = json_format.ParseDict(request_json, gateway_pb2.PublishRequest())
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gateway_pb2_grpc.TaskGatewayServiceStub(gateway.channel).Publish(request)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in caught.value.details()
    for word in words:
        assert word in caught.value.details()
    assert _bad_request_fields(caught.value) == [field]
    assert all(not messages for messages in (await topology.drain_all()).values())


async def test_typed_rpc_with_failed_field_rules_publishes_nothing(
    gateway: Any, topology: Topology
) -> None:
    """A typed request breaking payload rules names every bad field, and nothing is queued."""
    request = videos_pb2.GenerateRequest(
        user_id="u", payload=videos_pb2.GeneratePayload(model="v", duration_seconds=601)
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await videos_pb2_grpc.VideosServiceStub(gateway.channel).Generate(request)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _bad_request_fields(caught.value) == [
        "payload.prompt",
        "payload.video_name",
        "payload.duration_seconds",
    ]
    assert all(not messages for messages in (await topology.drain_all()).values())


async def test_oversized_request_is_resource_exhausted_and_publishes_nothing(
    start_gateway: Any, rabbitmq_url: str, topology: Topology
) -> None:
    """A request over grpc.max_request_bytes is RESOURCE_EXHAUSTED, and nothing is queued."""
    settings = replace_settings(make_settings(rabbitmq_url), "grpc", max_request_bytes=4096)
    running = await start_gateway(settings)
    await wait_connected(running.gateway)
    payload = images_pb2.GeneratePayload(model="m", prompt="x" * 5000, image_name="n")

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await images_pb2_grpc.ImagesServiceStub(running.channel).Generate(
            images_pb2.GenerateRequest(user_id="u", payload=payload)
        )

    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in caught.value.details()
    assert all(not messages for messages in (await topology.drain_all()).values())


async def test_same_idempotency_key_gives_same_task_key(gateway: Any, topology: Topology) -> None:
    """Retrying with one idempotency key returns the same task_key and message_id."""
    stub = images_pb2_grpc.ImagesServiceStub(gateway.channel)
    request = images_pb2.GenerateRequest(
        user_id="42",
        idempotency_key="order-7",
        payload=images_pb2.GeneratePayload(model="m", prompt="p", image_name="n"),
    )
    first = await stub.Generate(request)
    second = await stub.Generate(request)
    other = await stub.Generate(
        images_pb2.GenerateRequest(user_id="42", idempotency_key="order-8", payload=request.payload)
    )

    assert first.task_key == second.task_key != other.task_key
    messages = await topology.drain("images.queue")
    assert [m.message_id for m in messages] == [
        first.task_key.rsplit(":", 1)[1],
        first.task_key.rsplit(":", 1)[1],
        other.task_key.rsplit(":", 1)[1],
    ]


async def test_traceparent_is_forwarded_in_headers(gateway: Any, topology: Topology) -> None:
    """A W3C traceparent sent as metadata lands in the message headers."""
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    request = json_format.ParseDict(LEGACY_EXAMPLE, gateway_pb2.PublishRequest())
    await gateway_pb2_grpc.TaskGatewayServiceStub(gateway.channel).Publish(
        request, metadata=(("traceparent", traceparent),)
    )

    (message,) = await topology.drain("images.queue")
    assert message.headers["traceparent"] == traceparent


async def _publish_videos(channel: grpc.aio.Channel, count: int) -> list[str]:
    stub = videos_pb2_grpc.VideosServiceStub(channel)
    payload = videos_pb2.GeneratePayload(model="v", prompt="p", video_name="n")
    responses = await asyncio.gather(
        *(
            stub.Generate(videos_pb2.GenerateRequest(user_id=f"u{i}", payload=payload))
            for i in range(count)
        )
    )
    return [r.task_key for r in responses]


async def _publish_images_expecting_error(
    channel: grpc.aio.Channel, count: int
) -> list[grpc.aio.AioRpcError]:
    stub = images_pb2_grpc.ImagesServiceStub(channel)
    payload = images_pb2.GeneratePayload(model="m", prompt="p", image_name="n")
    results = await asyncio.gather(
        *(
            stub.Generate(images_pb2.GenerateRequest(user_id=f"u{i}", payload=payload))
            for i in range(count)
        ),
        return_exceptions=True,
    )
    assert all(isinstance(r, grpc.aio.AioRpcError) for r in results), results
    return results  # type: ignore[return-value]


async def test_unroutable_task_fails_alone_and_gateway_recovers(
    gateway: Any, topology: Topology
) -> None:
    """With a binding removed, its task type gets FAILED_PRECONDITION while others succeed."""
    await _publish_videos(gateway.channel, 1)  # warm up: the exchange check is cached
    await topology.unbind("images.queue", "images.tasks", "images.generate")

    errors, video_keys = await asyncio.gather(
        _publish_images_expecting_error(gateway.channel, 20), _publish_videos(gateway.channel, 50)
    )

    for error in errors:
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "'images.tasks'" in error.details()
        assert "'images.generate'" in error.details()
        assert "unroutable" in error.details()
    landed = await topology.drain_all()
    assert landed["images.queue"] == []
    landed_ids = {m.message_id for m in landed["videos.queue"]}
    assert len(landed["videos.queue"]) == 51  # the warm-up and the 50
    assert {k.rsplit(":", 1)[1] for k in video_keys} <= landed_ids

    await topology.bind("images.queue", "images.tasks", "images.generate")
    stub = images_pb2_grpc.ImagesServiceStub(gateway.channel)
    await stub.Generate(
        images_pb2.GenerateRequest(
            user_id="back",
            payload=images_pb2.GeneratePayload(model="m", prompt="p", image_name="n"),
        )
    )
    assert len(await topology.drain("images.queue")) == 1


async def test_deleted_exchange_fails_alone_and_gateway_recovers(
    start_gateway: Any, rabbitmq_url: str, topology: Topology
) -> None:
    """With an exchange deleted at run time, its tasks fail, others all succeed; once the
    gateway knows, the answer is FAILED_PRECONDITION naming exchange and routing key."""
    # Asking the broker again at once: this test re-creates the exchange and publishes.
    settings = replace_settings(make_settings(rabbitmq_url), "broker", missing_exchange_seconds=0)
    gateway = await start_gateway(settings)
    await wait_connected(gateway.gateway)
    stub = images_pb2_grpc.ImagesServiceStub(gateway.channel)
    payload = images_pb2.GeneratePayload(model="m", prompt="p", image_name="n")
    await stub.Generate(images_pb2.GenerateRequest(user_id="before", payload=payload))
    await _publish_videos(gateway.channel, 1)
    await topology.drain_all()
    await topology.delete_exchange("images.tasks")

    errors, video_keys = await asyncio.gather(
        _publish_images_expecting_error(gateway.channel, 20), _publish_videos(gateway.channel, 50)
    )
    (after,) = await _publish_images_expecting_error(gateway.channel, 1)

    # The publishes in flight when the broker closed the channel cannot know whether they
    # were stored before the deletion: they say so (UNAVAILABLE, outcome unknown).
    for error in errors:
        assert error.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNAVAILABLE)
        assert "'images.tasks'" in error.details()
        assert "'images.generate'" in error.details()
        if error.code() == grpc.StatusCode.UNAVAILABLE:
            assert "outcome is unknown" in error.details()
    assert after.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "exchange 'images.tasks' does not exist" in after.details()
    assert "'images.generate'" in after.details()
    landed = await topology.drain_all()
    assert sorted(m.message_id for m in landed["videos.queue"]) == sorted(
        k.rsplit(":", 1)[1] for k in video_keys
    )

    await topology.declare_exchange("images.tasks")  # back, with its bindings
    response = await stub.Generate(images_pb2.GenerateRequest(user_id="after", payload=payload))
    (message,) = await topology.drain("images.queue")
    assert message.message_id == response.task_key.rsplit(":", 1)[1]
