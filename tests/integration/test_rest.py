"""The REST shim against the real RabbitMQ: what lands in the queues, and the answers only a real
broker gives (unroutable, a missing exchange, readiness). Broker-free errors: tests/service."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
from google.protobuf import json_format
from taskgateway_api.images.v1 import images_pb2, images_pb2_grpc
from taskgateway_api.taskgateway.v1 import gateway_pb2, gateway_pb2_grpc

from tests.conftest import Topology, make_settings, url
from tests.integration.test_publish import LEGACY_EXAMPLE

# The legacy README's example request, byte for byte.
LEGACY_REQUEST = b"""{
"user_id": "12345",
"task_type": "images.generate",
"payload": {
"model": "openrouter::google/gemini-3.1-flash-image-preview",
"prompt": "post-apocalyptic warrior standing in a ruined city",
"image_name": "warrior"
}
}"""


async def test_legacy_curl_request_publishes_the_legacy_message(
    gateway: Any, topology: Topology
) -> None:
    """The legacy README's curl request answers 200 with a task_key and lands the legacy body."""
    process = await asyncio.create_subprocess_exec(
        "curl", "-sS", "-X", "POST", url(gateway, "/api/v1/broker/publish"),
        "-H", "Content-Type: application/json", "--data-binary", "@-",
        "-w", "\n%{http_code}",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, _ = await asyncio.wait_for(process.communicate(LEGACY_REQUEST), 30)
    body, status = stdout.decode().rsplit("\n", 1)

    assert status == "200"
    answer = json.loads(body)
    assert list(answer) == ["task_key"]
    user_id, service, task_id = answer["task_key"].split(":")
    assert (user_id, service) == ("12345", "image-generation")
    (message,) = await topology.drain("images.queue")
    assert json.loads(message.body) == {
        "task_id": task_id,
        "user_id": "12345",
        "task_type": "images.generate",
        "payload": LEGACY_EXAMPLE["payload"],
    }
    assert message.message_id == task_id
    assert message.headers["task_key"] == answer["task_key"]


async def test_rest_and_grpc_publish_messages_differing_only_in_task_id(
    gateway: Any, topology: Topology, http: aiohttp.ClientSession
) -> None:
    """A REST request and the same gRPC request put the same message, but for task_id."""
    async with http.post(url(gateway, "/api/v1/broker/publish"), json=LEGACY_EXAMPLE) as response:
        assert response.status == 200
    await gateway_pb2_grpc.TaskGatewayServiceStub(gateway.channel).Publish(
        json_format.ParseDict(LEGACY_EXAMPLE, gateway_pb2.PublishRequest())
    )
    rest, grpc_message = await topology.drain("images.queue")

    rest_body, grpc_body = json.loads(rest.body), json.loads(grpc_message.body)
    assert rest_body["task_id"] != grpc_body["task_id"]
    assert {**rest_body, "task_id": ""} == {**grpc_body, "task_id": ""}
    for name in ("content_type", "delivery_mode", "type", "app_id"):
        assert getattr(rest, name) == getattr(grpc_message, name)


async def test_typed_rest_route_accepts_lower_camel_and_publishes(
    gateway: Any, topology: Topology, http: aiohttp.ClientSession
) -> None:
    """POST /api/v1/images/generate takes the typed request, lowerCamel names included."""
    request = {"userId": "5", "payload": {"model": "m", "prompt": "p", "imageName": "n"}}
    async with http.post(url(gateway, "/api/v1/images/generate"), json=request) as response:
        answer = await response.json()

    assert response.status == 200
    (message,) = await topology.drain("images.queue")
    assert answer == {"task_key": f"5:image-generation:{message.message_id}"}
    assert json.loads(message.body)["payload"] == {"model": "m", "prompt": "p", "image_name": "n"}


async def test_headers_are_forwarded_as_call_metadata(
    gateway: Any, topology: Topology, http: aiohttp.ClientSession
) -> None:
    """traceparent (as a header or Grpc-Metadata-Traceparent) reaches the message headers."""
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    for header in ("traceparent", "Grpc-Metadata-Traceparent"):
        async with http.post(
            url(gateway, "/api/v1/broker/publish"),
            json=LEGACY_EXAMPLE,
            headers={header: traceparent, "X-Request-Id": "req-1", "Grpc-Timeout": "5S"},
        ) as response:
            assert response.status == 200

    messages = await topology.drain("images.queue")
    assert [m.headers["traceparent"] for m in messages] == [traceparent, traceparent]


async def test_unroutable_and_missing_exchange_are_400_failed_precondition(
    gateway: Any, topology: Topology, http: aiohttp.ClientSession
) -> None:
    """Unroutable and missing-exchange tasks answer 400 with code 9 naming exchange and key."""
    await topology.unbind("images.queue", "images.tasks", "images.generate")
    async with http.post(url(gateway, "/api/v1/broker/publish"), json=LEGACY_EXAMPLE) as response:
        unroutable = await response.json()
    assert response.status == 400
    await topology.delete_exchange("images.tasks")
    async with http.post(url(gateway, "/api/v1/broker/publish"), json=LEGACY_EXAMPLE) as response:
        missing = await response.json()

    assert response.status == 400
    for answer, word in ((unroutable, "unroutable"), (missing, "does not exist")):
        assert answer["code"] == 9
        assert "'images.tasks'" in answer["message"]
        assert "'images.generate'" in answer["message"]
        assert word in answer["message"]
    assert all(not messages for messages in (await topology.drain_all()).values())


async def test_broker_down_is_503_and_not_ready(
    start_gateway: Any, http: aiohttp.ClientSession
) -> None:
    """With the broker unreachable, publishing is 503 (code 14) and /readyz is 503."""
    running = await start_gateway(make_settings("amqp://guest:guest@127.0.0.1:1/"))

    async with http.post(url(running, "/api/v1/broker/publish"), json=LEGACY_EXAMPLE) as response:
        answer = await response.json()
    async with http.get(url(running, "/readyz")) as ready:
        readiness = await ready.json()
    async with http.get(url(running, "/healthz")) as alive:
        assert alive.status == 200

    assert (response.status, answer["code"]) == (503, 14)
    assert ready.status == 503
    assert readiness["status"] == "not ready"
    assert "not connected" in readiness["reason"]


async def test_readyz_follows_broker_and_exchanges(
    gateway: Any, topology: Topology, http: aiohttp.ClientSession
) -> None:
    """/readyz is 200 with the broker and exchanges present, 503 naming a deleted exchange."""
    async with http.get(url(gateway, "/readyz")) as response:
        assert (response.status, await response.json()) == (200, {"status": "ready"})
    await topology.delete_exchange("videos.tasks")
    # The exchange was checked (and cached) above; a publish finding it gone forgets it.
    async with http.post(
        url(gateway, "/api/v1/videos/generate"),
        json={"user_id": "1", "payload": {"model": "v", "prompt": "p", "video_name": "n"}},
    ) as response:
        assert response.status == 400

    async with http.get(url(gateway, "/readyz")) as response:
        answer = await response.json()
    assert response.status == 503
    assert "videos.tasks" in answer["reason"]


async def test_grpc_typed_request_over_rest_matches_grpc(
    gateway: Any, topology: Topology, http: aiohttp.ClientSession
) -> None:
    """The typed REST route and the typed gRPC call publish the same body but for task_id."""
    payload = {"model": "m", "prompt": "p", "image_name": "n", "width": 512}
    async with http.post(
        url(gateway, "/api/v1/images/generate"), json={"user_id": "8", "payload": payload}
    ) as response:
        assert response.status == 200
    await images_pb2_grpc.ImagesServiceStub(gateway.channel).Generate(
        images_pb2.GenerateRequest(user_id="8", payload=images_pb2.GeneratePayload(**payload))
    )

    first, second = [json.loads(m.body) for m in await topology.drain("images.queue")]
    assert {**first, "task_id": ""} == {**second, "task_id": ""}
