"""Batch and streaming publish against the real RabbitMQ: per-entry answers, nothing lost."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from google.protobuf import any_pb2, json_format
from taskgateway_api.images.v1 import images_pb2
from taskgateway_api.taskgateway.v1 import gateway_pb2, gateway_pb2_grpc
from taskgateway_api.videos.v1 import videos_pb2

from tests.conftest import Topology, url
from tests.integration.test_publish import LEGACY_EXAMPLE


def _typed(message: Any) -> gateway_pb2.TaskEntry:
    typed = any_pb2.Any()
    typed.Pack(message)
    return gateway_pb2.TaskEntry(typed=typed)


def _entries() -> list[gateway_pb2.TaskEntry]:
    """A generic task, two typed ones, and one with an empty user_id."""
    image = images_pb2.GenerateRequest(
        user_id="b1", payload=images_pb2.GeneratePayload(model="m", prompt="p", image_name="n")
    )
    video = videos_pb2.AnimateRequest(
        user_id="b2",
        payload=videos_pb2.AnimatePayload(model="v", source_image_name="s", video_name="n"),
    )
    bad = images_pb2.GenerateRequest(user_id="", payload=image.payload)
    return [
        gateway_pb2.TaskEntry(
            publish=json_format.ParseDict(LEGACY_EXAMPLE, gateway_pb2.PublishRequest())
        ),
        _typed(image),
        _typed(bad),
        _typed(video),
    ]


async def test_grpc_batch_answers_each_entry_and_publishes_the_good_ones(
    gateway: Any, topology: Topology
) -> None:
    """A batch with one bad entry publishes the others and says which failed and why."""
    response = await gateway_pb2_grpc.TaskGatewayServiceStub(gateway.channel).PublishBatch(
        gateway_pb2.PublishBatchRequest(entries=_entries())
    )

    results = list(response.results)
    assert [r.index for r in results] == [0, 1, 2, 3]
    assert [r.WhichOneof("result") for r in results] == [
        "task_key",
        "task_key",
        "error",
        "task_key",
    ]
    assert results[2].error.code == 3
    assert "user_id" in results[2].error.message
    landed = await topology.drain_all()
    assert sorted(m.message_id for m in landed["images.queue"]) == sorted(
        r.task_key.rsplit(":", 1)[1] for r in results[:2]
    )
    (video,) = landed["videos.queue"]
    assert results[3].task_key == f"b2:video-generation:{video.message_id}"
    assert json.loads(video.body)["task_type"] == "videos.animate"


async def test_rest_batch_takes_typed_entries_as_any(
    gateway: Any, topology: Topology, http: aiohttp.ClientSession
) -> None:
    """POST /api/v1/broker/publish-batch takes generic and @type-tagged typed entries."""
    body = {
        "entries": [
            {"publish": LEGACY_EXAMPLE},
            {
                "typed": {
                    "@type": "type.googleapis.com/videos.v1.GenerateRequest",
                    "user_id": "r1",
                    "payload": {"model": "v", "prompt": "waves", "videoName": "sea"},
                }
            },
            {"publish": {**LEGACY_EXAMPLE, "task_type": "images.nope"}},
        ]
    }
    async with http.post(url(gateway, "/api/v1/broker/publish-batch"), json=body) as response:
        answer = await response.json()

    assert response.status == 200
    first, second, third = answer["results"]
    assert (first["index"], second["index"], third["index"]) == (0, 1, 2)
    assert first["task_key"].startswith("12345:image-generation:")
    assert second["task_key"].startswith("r1:video-generation:")
    assert third["error"]["code"] == 3
    assert "images.nope" in third["error"]["message"]
    landed = await topology.drain_all()
    assert [len(landed["images.queue"]), len(landed["videos.queue"])] == [1, 1]
    assert json.loads(landed["videos.queue"][0].body)["payload"] == {
        "model": "v",
        "prompt": "waves",
        "video_name": "sea",
    }


async def test_stream_answers_every_task_with_its_index(gateway: Any, topology: Topology) -> None:
    """A stream of 200 tasks gets 200 answers, each with its index; all of them landed."""
    count = 200

    async def requests() -> AsyncIterator[gateway_pb2.PublishStreamRequest]:
        for index in range(count):
            publish = json_format.ParseDict(
                {**LEGACY_EXAMPLE, "user_id": f"s{index}"}, gateway_pb2.PublishRequest()
            )
            yield gateway_pb2.PublishStreamRequest(entry=gateway_pb2.TaskEntry(publish=publish))

    stub = gateway_pb2_grpc.TaskGatewayServiceStub(gateway.channel)
    results = [r async for response in stub.PublishStream(requests()) for r in response.results]

    assert sorted(r.index for r in results) == list(range(count))
    assert all(r.WhichOneof("result") == "task_key" for r in results)
    for result in results:
        assert result.task_key.startswith(f"s{result.index}:image-generation:")
    landed = await topology.drain("images.queue")
    assert sorted(m.message_id for m in landed) == sorted(
        r.task_key.rsplit(":", 1)[1] for r in results
    )


async def test_stream_reports_a_bad_task_and_goes_on(gateway: Any, topology: Topology) -> None:
    """A bad task in a stream gets its error with its index; the tasks after it are published."""
    entries = _entries()

    async def requests() -> AsyncIterator[gateway_pb2.PublishStreamRequest]:
        for entry in entries:
            yield gateway_pb2.PublishStreamRequest(entry=entry)
            await asyncio.sleep(0)

    stub = gateway_pb2_grpc.TaskGatewayServiceStub(gateway.channel)
    by_index = {
        r.index: r async for response in stub.PublishStream(requests()) for r in response.results
    }

    assert sorted(by_index) == [0, 1, 2, 3]
    assert by_index[2].error.code == 3
    assert all(by_index[i].task_key for i in (0, 1, 3))
    landed = await topology.drain_all()
    assert len(landed["images.queue"]) + len(landed["videos.queue"]) == 3


async def test_rest_batch_entry_with_a_bad_typed_request_fails_alone(
    gateway: Any, topology: Topology, http: aiohttp.ClientSession
) -> None:
    """A typed entry whose payload does not parse gets its own INVALID_ARGUMENT naming the
    field in the entry; the good entry beside it is published."""
    generate = "type.googleapis.com/images.v1.GenerateRequest"
    payload = {"model": "m", "prompt": "p", "imageName": "i"}
    body = {
        "entries": [
            {"typed": {"@type": generate, "user_id": "r1", "payload": {**payload, "width": "abc"}}},
            {"typed": {"@type": generate, "user_id": "r2", "payload": payload}},
        ]
    }
    async with http.post(url(gateway, "/api/v1/broker/publish-batch"), json=body) as response:
        status, answer = response.status, await response.json()

    assert status == 200
    bad, good = answer["results"]
    assert bad["error"]["code"] == 3
    (violation,) = bad["error"]["details"][0]["field_violations"]
    assert violation["field"] == "entries[0].typed.payload.width"
    assert violation["description"].endswith("got a string")
    assert good["task_key"].startswith("r2:image-generation:")
    (landed,) = await topology.drain("images.queue")
    assert good["task_key"] == f"r2:image-generation:{landed.message_id}"
    assert json.loads(landed.body)["user_id"] == "r2"
