"""The clients' submit and publish against a gateway publishing to RabbitMQ.

Each test runs with the sync client (in a thread, as the gateway serves from this event loop)
and with the asyncio client.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections import Counter
from typing import Any

import pytest
from task_gateway_client import (
    AsyncTaskGatewayClient,
    FieldViolation,
    InvalidTask,
    OutcomeUnknown,
    RetryPolicy,
    TaskGatewayClient,
    Unavailable,
)
from taskgateway_api.images.v1 import images_pb2
from taskgateway_api.taskgateway.v1 import gateway_pb2

from tests.clients.conftest import generate_request, task_id, task_ids
from tests.clients.servers import Call, Context
from tests.conftest import RunningGateway
from tests.support.ports import free_port
from tests.support.rabbitmq import Topology

FAST_RETRY = RetryPolicy(initial_backoff=0.01, max_backoff=0.05, max_attempts=3)


async def test_submit_and_publish_each_land_one_message_with_the_answered_task_id(
    gateway: RunningGateway, topology: Topology, call: Any
) -> None:
    """A typed submit and a generic publish each land one message whose task id the key holds."""
    typed_key = await call(gateway.address, "submit", generate_request("fox"))
    generic_key = await call(
        gateway.address,
        "publish",
        "videos.generate",
        "12345",
        {"model": "v1", "prompt": "waves", "video_name": "sea", "duration_seconds": 5},
    )

    images, videos = await topology.drain("images.queue"), await topology.drain("videos.queue")
    assert typed_key.startswith("12345:image-generation:")
    assert generic_key.startswith("12345:video-generation:")
    assert task_ids(images) == [task_id(typed_key)]
    assert task_ids(videos) == [task_id(generic_key)]
    assert json.loads(images[0].body)["payload"]["image_name"] == "fox"
    assert json.loads(videos[0].body)["payload"]["duration_seconds"] == 5


async def test_invalid_task_raises_invalid_task_naming_the_field_and_nothing_lands(
    gateway: RunningGateway, topology: Topology, call: Any
) -> None:
    """A task without image_name raises InvalidTask whose violation names payload.image_name."""
    request = generate_request()
    request.payload.ClearField("image_name")

    with pytest.raises(InvalidTask) as raised:
        await call(gateway.address, "submit", request)

    assert raised.value.violations == [FieldViolation("payload.image_name", "is required")]
    assert raised.value.code.name == "INVALID_ARGUMENT"
    assert await topology.drain_all() == {"images.queue": [], "videos.queue": []}


async def test_a_retry_after_a_dropped_answer_lands_messages_of_one_task_id(
    gateway: RunningGateway, topology: Topology, call: Any, dropping_proxy: Any
) -> None:
    """When the first answer is lost, the retry reuses the key: both messages carry one task id."""
    proxy = await dropping_proxy(gateway.address, drops=1)

    task_key = await call(proxy.address, "submit", generate_request(), client={"retry": FAST_RETRY})

    landed = task_ids(await topology.drain("images.queue"))
    assert len(proxy.forwarded) == 2
    assert landed == [task_id(task_key)] * 2


async def test_an_unknown_outcome_carries_the_key_that_makes_the_same_task_again(
    gateway: RunningGateway, topology: Topology, call: Any, dropping_proxy: Any
) -> None:
    """OutcomeUnknown's idempotency key, sent again, yields the task id its lost attempts had."""
    proxy = await dropping_proxy(gateway.address, drops=3)
    retry = RetryPolicy(initial_backoff=0.01, max_backoff=0.05, max_attempts=3)

    with pytest.raises(OutcomeUnknown) as raised:
        await call(
            proxy.address,
            "publish",
            "images.generate",
            "12345",
            {"model": "m", "prompt": "p", "image_name": "w"},
            client={"retry": retry},
        )
    lost = task_ids(await topology.drain("images.queue"))
    again = await call(
        gateway.address,
        "publish",
        "images.generate",
        "12345",
        {"model": "m", "prompt": "p", "image_name": "w"},
        idempotency_key=raised.value.idempotency_key,
    )

    assert len(lost) == 3
    assert set(lost) == {task_id(again)}


async def test_a_gateway_that_cannot_be_reached_raises_unavailable(call: Any) -> None:
    """No connection at all means nothing was sent: Unavailable, not OutcomeUnknown."""
    with pytest.raises(Unavailable) as raised:
        await call(
            f"127.0.0.1:{free_port()}", "submit", generate_request(), client={"retry": FAST_RETRY}
        )

    assert not isinstance(raised.value, OutcomeUnknown)


async def test_a_gateway_name_that_does_not_resolve_raises_unavailable(call: Any) -> None:
    """A name that does not resolve (.invalid never does) means nothing was sent: Unavailable."""
    with pytest.raises(Unavailable) as raised:
        await call(
            "no-such-host.invalid:50051", "submit", generate_request(), client={"retry": FAST_RETRY}
        )

    assert not isinstance(raised.value, OutcomeUnknown)
    assert "resolv" in raised.value.message


@pytest.mark.parametrize("deadline", [0, -1.0, math.nan, math.inf])
async def test_a_deadline_that_is_no_positive_finite_number_is_refused_naming_it(
    deadline: float,
) -> None:
    """A client's deadline or a call's (0 included, not taken for "the default") that is not a
    positive finite number of seconds is a ValueError naming deadline; nothing is sent."""
    for client_type in (TaskGatewayClient, AsyncTaskGatewayClient):
        with pytest.raises(ValueError, match=f"deadline must be .*got {deadline!r}"):
            client_type("127.0.0.1:1", deadline=deadline)
    no_retry = RetryPolicy(max_attempts=1)
    with TaskGatewayClient("127.0.0.1:1", retry=no_retry) as client:
        with pytest.raises(ValueError, match="deadline must be"):
            client.publish("images.generate", "12345", {}, deadline=deadline)
        with pytest.raises(ValueError, match="deadline must be"):
            client.submit(generate_request(), deadline=deadline)
    async with AsyncTaskGatewayClient("127.0.0.1:1", retry=no_retry) as async_client:
        with pytest.raises(ValueError, match="deadline must be"):
            await async_client.publish("images.generate", "12345", {}, deadline=deadline)


@pytest.mark.parametrize("connections", [1, 3])
async def test_calls_take_the_clients_connections_in_turn(
    fake_gateway: Any, connections: int
) -> None:
    """Each call goes out on the next of the client's connections (one by default), so that a
    client can reach several of the gateway's workers: six calls, 6 / connections on each."""

    async def script(call: Call, context: Context) -> bytes:
        return images_pb2.GenerateResponse(task_key="12345:image-generation:t").SerializeToString()

    fake = await fake_gateway(script)

    def sync_calls() -> None:
        with TaskGatewayClient(fake.address, connections=connections) as client:
            for _ in range(6):
                client.submit(generate_request())

    await asyncio.to_thread(sync_calls)
    async with AsyncTaskGatewayClient(fake.address, connections=connections) as async_client:
        for _ in range(6):
            await async_client.submit(generate_request())

    sync_peers = Counter(call.peer for call in fake.calls[:6])
    async_peers = Counter(call.peer for call in fake.calls[6:])
    assert sorted(sync_peers.values()) == [6 // connections] * connections, sync_peers
    assert sorted(async_peers.values()) == [6 // connections] * connections, async_peers


async def test_calls_to_a_target_of_several_addresses_reach_each_of_them(
    fake_gateway: Any,
) -> None:
    """A target naming several gateways (as a headless Service's name does) spreads calls over
    all of them (round_robin), rather than sending every call to the first (pick_first)."""

    async def script(call: Call, context: Context) -> bytes:
        return images_pb2.GenerateResponse(task_key="12345:image-generation:t").SerializeToString()

    fakes = [await fake_gateway(script) for _ in range(2)]
    target = "ipv4:" + ",".join(fake.address for fake in fakes)
    async with AsyncTaskGatewayClient(target) as client:
        for _ in range(200):  # until both got a call: the second may connect a little later
            await client.submit(generate_request())
            if all(fake.calls for fake in fakes):
                break

    assert [bool(fake.calls) for fake in fakes] == [True, True], [len(f.calls) for f in fakes]


@pytest.mark.parametrize("connections", [0, -1, 1.5, True, "2"])
def test_a_connection_count_that_is_no_whole_number_from_one_is_refused_naming_it(
    connections: Any,
) -> None:
    for client_type in (TaskGatewayClient, AsyncTaskGatewayClient):
        with pytest.raises(ValueError, match=f"connections must be .*got {connections!r}"):
            client_type("127.0.0.1:1", connections=connections)


def test_a_message_that_no_task_rpc_takes_is_refused_before_anything_is_sent() -> None:
    """submit() of a message that is no typed request raises TypeError listing the typed ones."""
    with TaskGatewayClient("127.0.0.1:1") as client, pytest.raises(TypeError) as raised:
        client.submit(gateway_pb2.ListTaskTypesRequest())

    assert "taskgateway.v1.ListTaskTypesRequest is not the request of a task RPC" in str(
        raised.value
    )
    assert "images.v1.GenerateRequest" in str(raised.value)


def test_a_payload_that_is_not_json_like_is_refused_before_anything_is_sent() -> None:
    """publish() of a payload holding a non-JSON value raises TypeError naming the payload."""
    with TaskGatewayClient("127.0.0.1:1") as client, pytest.raises(TypeError, match="payload"):
        client.publish("images.generate", "12345", {"when": object()})
