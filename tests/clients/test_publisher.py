"""The batching publisher: many tasks in few PublishBatch calls, each settled and retried on its
own, with flow control, against the real gateway (and RabbitMQ) or a scripted fake one."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from collections import Counter
from concurrent.futures import Future
from typing import Any

import grpc
import pytest
from google.protobuf.any_pb2 import Any as AnyProto
from google.rpc import status_pb2
from task_gateway_client import (
    AsyncTaskGatewayClient,
    FieldViolation,
    InvalidTask,
    OutcomeUnknown,
    PublisherFull,
    RetryPolicy,
    TaskGatewayClient,
)
from task_gateway_client._batching import Batcher, BatchSettings, batch_request
from task_gateway_client._connection import Connection
from task_gateway_client._errors import Failure, TaskGatewayError
from task_gateway_client._tasks import generic_task
from taskgateway_api.images.v1 import images_pb2
from taskgateway_api.taskgateway.v1 import gateway_pb2

from tests.clients.conftest import generate_request, task_id, task_ids
from tests.clients.servers import Call, Context, abort_with_garbled_details
from tests.conftest import ROOT, RunningGateway
from tests.support.rabbitmq import Topology
from tests.support.waits import hang_guard

FAST_RETRY = RetryPolicy(initial_backoff=0.01, max_backoff=0.05)


class Publishing:
    """One publisher of either client, driven from the event loop the gateway serves from.

    The sync publisher's publish() only queues the task (its sender thread calls the
    gateway), so it is called directly unless it may block on flow control.
    """

    def __init__(self, kind: str, target: str, **settings: Any) -> None:
        self.kind = kind
        client_args = {
            "retry": settings.pop("retry", FAST_RETRY),
            "connections": settings.pop("connections", 1),
        }
        if kind == "sync":
            self.client: Any = TaskGatewayClient(target, **client_args)
        else:
            self.client = AsyncTaskGatewayClient(target, **client_args)
        self.publisher = self.client.publisher(**settings)

    async def submit(self, request: Any) -> asyncio.Future[str]:
        if self.kind == "sync":
            return asyncio.wrap_future(self.publisher.submit(request))
        future: asyncio.Future[str] = await self.publisher.submit(request)
        return future

    async def publish(self, *args: Any, **kwargs: Any) -> asyncio.Future[str]:
        if self.kind == "sync":
            return asyncio.wrap_future(self.publisher.publish(*args, **kwargs))
        future: asyncio.Future[str] = await self.publisher.publish(*args, **kwargs)
        return future

    async def submit_in_background(self, request: Any) -> asyncio.Task[asyncio.Future[str]]:
        """submit() in a task (a thread for the sync publisher), for when it may block."""
        if self.kind == "sync":
            blocking = asyncio.to_thread(self.publisher.submit, request)

            async def wrapped() -> asyncio.Future[str]:
                concurrent: Future[str] = await blocking
                return asyncio.wrap_future(concurrent)

            return asyncio.create_task(wrapped())
        return asyncio.create_task(self.publisher.submit(request))

    async def close(self) -> None:
        if self.kind == "sync":
            await asyncio.to_thread(self.client.close)
        else:
            await self.client.close()


@pytest.fixture(params=["sync", "async"])
async def publishing(request: pytest.FixtureRequest) -> Any:
    """`publishing(target, **publisher settings)`: a publisher of the sync or asyncio client."""
    made: list[Publishing] = []

    def make(target: str, **settings: Any) -> Publishing:
        made.append(Publishing(request.param, target, **settings))
        return made[-1]

    yield make
    for item in made:
        await item.close()


async def test_every_task_resolves_to_a_key_whose_task_id_landed_exactly_once(
    gateway: RunningGateway, topology: Topology, publishing: Any
) -> None:
    """300 typed and generic tasks: every future gives a key, each key's task id is one message."""
    publisher = publishing(gateway.address, max_batch=50)

    futures = []
    for index in range(150):
        futures.append(await publisher.submit(generate_request(f"image-{index}")))
        futures.append(
            await publisher.publish(
                "images.generate", "12345", {"model": "m", "prompt": "p", "image_name": f"g{index}"}
            )
        )
    task_keys = await asyncio.gather(*futures)

    landed = Counter(task_ids(await topology.drain("images.queue")))
    assert len(set(task_keys)) == 300
    assert landed == Counter(task_id(key) for key in task_keys)


async def test_tasks_of_a_batch_whose_answer_was_lost_are_retried_with_their_keys(
    gateway: RunningGateway, topology: Topology, publishing: Any, dropping_proxy: Any
) -> None:
    """When a batch's answer is lost, its tasks go again with their keys: same task ids."""
    proxy = await dropping_proxy(gateway.address, drops=1)
    publisher = publishing(proxy.address, max_batch=10, max_latency=60)

    futures = [await publisher.submit(generate_request(f"image-{i}")) for i in range(10)]
    task_keys = await asyncio.gather(*futures)

    landed = Counter(task_ids(await topology.drain("images.queue")))
    assert proxy.forwarded == ["/taskgateway.v1.TaskGatewayService/PublishBatch"] * 2
    assert landed == {task_id(key): 2 for key in task_keys}


async def test_an_invalid_task_fails_alone(
    gateway: RunningGateway, topology: Topology, publishing: Any
) -> None:
    """A bad task of a batch raises InvalidTask naming its field; the others are published."""
    publisher = publishing(gateway.address, max_batch=3, max_latency=60)
    invalid = generate_request()
    invalid.payload.ClearField("image_name")

    good = [await publisher.submit(generate_request(f"image-{i}")) for i in range(2)]
    bad = await publisher.submit(invalid)
    task_keys = await asyncio.gather(*good)
    with pytest.raises(InvalidTask) as raised:
        await bad

    assert raised.value.violations == [FieldViolation("payload.image_name", "is required")]
    assert task_ids(await topology.drain("images.queue")) == [task_id(k) for k in task_keys]


async def test_close_waits_for_every_outstanding_task(
    gateway: RunningGateway, topology: Topology, publishing: Any
) -> None:
    """Tasks still waiting for their batch are sent by close(), which returns once all settled."""
    publisher = publishing(gateway.address, max_batch=1000, max_latency=60)
    futures = [await publisher.submit(generate_request(f"image-{i}")) for i in range(20)]

    await publisher.close()

    assert all(future.done() for future in futures)
    task_keys = [future.result() for future in futures]
    assert sorted(task_ids(await topology.drain("images.queue"))) == sorted(
        task_id(key) for key in task_keys
    )


def _batch_answer(call: Call) -> bytes:
    """Every entry of a PublishBatch call accepted, its task key made of its idempotency key."""
    request = gateway_pb2.PublishBatchRequest.FromString(call.request)
    return gateway_pb2.PublishBatchResponse(
        results=[
            gateway_pb2.TaskResult(index=i, task_key=f"12345:image-generation:{_key(entry)}")
            for i, entry in enumerate(request.entries)
        ]
    ).SerializeToString()


def _key(entry: gateway_pb2.TaskEntry) -> str:
    typed = images_pb2.GenerateRequest()
    entry.typed.Unpack(typed)
    return typed.idempotency_key


def _keys(call: Call) -> list[str]:
    return [_key(e) for e in gateway_pb2.PublishBatchRequest.FromString(call.request).entries]


async def test_a_publisher_sends_its_batches_over_the_clients_connections_in_turn(
    fake_gateway: Any, publishing: Any
) -> None:
    """On a client with three connections, six one-task batches go two on each connection."""

    async def script(call: Call, context: Context) -> bytes:
        return _batch_answer(call)

    fake = await fake_gateway(script)
    publisher = publishing(fake.address, connections=3, max_batch=1, max_latency=0)
    futures = [await publisher.submit(generate_request(f"image-{i}")) for i in range(6)]
    await asyncio.gather(*futures)

    per_connection = Counter(call.peer for call in fake.calls)
    assert sorted(per_connection.values()) == [2, 2, 2], per_connection


async def test_a_task_that_failed_in_a_batch_goes_again_alone_with_its_key(
    fake_gateway: Any, publishing: Any
) -> None:
    """An entry answered UNAVAILABLE is sent again in a later batch with the same key."""

    async def script(call: Call, context: Context) -> bytes:
        if len(fake.calls) > 1:
            return _batch_answer(call)
        first, _second = _keys(call)
        return gateway_pb2.PublishBatchResponse(
            results=[
                gateway_pb2.TaskResult(index=0, task_key=f"12345:image-generation:{first}"),
                gateway_pb2.TaskResult(
                    index=1, error=status_pb2.Status(code=14, message="broker away")
                ),
            ]
        ).SerializeToString()

    fake = await fake_gateway(script)
    publisher = publishing(fake.address, max_batch=2, max_latency=60)

    futures = [await publisher.submit(generate_request(f"image-{i}")) for i in range(2)]
    task_keys = await asyncio.gather(*futures)

    first_call, second_call = fake.calls
    assert _keys(second_call) == _keys(first_call)[1:]
    assert [task_id(key) for key in task_keys] == _keys(first_call)


@pytest.fixture
async def held_gateway(fake_gateway: Any) -> Any:
    """A fake gateway that answers PublishBatch calls only once `release` is set."""
    release = asyncio.Event()
    received = asyncio.Event()

    async def script(call: Call, context: Context) -> bytes:
        received.set()
        await release.wait()
        return _batch_answer(call)

    fake = await fake_gateway(script)
    fake.release, fake.received = release, received
    return fake


async def test_a_full_publisher_made_to_raise_refuses_the_next_task(
    held_gateway: Any, publishing: Any
) -> None:
    """With max_outstanding tasks unanswered, submit raises PublisherFull; later it has room."""
    publisher = publishing(
        held_gateway.address, max_outstanding=2, when_full="raise", max_latency=0
    )
    held = [await publisher.submit(generate_request(f"image-{i}")) for i in range(2)]

    with pytest.raises(PublisherFull) as raised:
        await publisher.submit(generate_request("one-too-many"))
    held_gateway.release.set()
    await asyncio.gather(*held)
    after = await publisher.submit(generate_request("with-room-again"))

    assert raised.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_outstanding=2" in raised.value.message
    assert (await after).startswith("12345:image-generation:")
    sent = [key for call in held_gateway.calls for key in _keys(call)]
    assert len(sent) == 3  # the refused task was never sent


async def test_a_full_publisher_blocks_until_a_task_settles(
    held_gateway: Any, publishing: Any
) -> None:
    """With max_outstanding tasks unanswered, submit waits; the third task is sent only after."""
    publisher = publishing(held_gateway.address, max_outstanding=2, max_latency=0)
    held = [await publisher.submit(generate_request(f"image-{i}")) for i in range(2)]
    await held_gateway.received.wait()

    third = await publisher.submit_in_background(generate_request("third"))
    done, _ = await asyncio.wait([third], timeout=0.2)
    assert not done, "submit returned while the publisher was full"
    calls_while_full = len(held_gateway.calls)
    held_gateway.release.set()
    task_keys = await asyncio.gather(*held, await third)

    assert len(task_keys) == 3
    first_keys = [key for call in held_gateway.calls[:calls_while_full] for key in _keys(call)]
    assert len(first_keys) == 2
    assert task_id(task_keys[2]) not in first_keys


def test_publisher_settings_that_cannot_work_are_refused_naming_the_setting() -> None:
    """A batch of no task or an unknown when_full is a ValueError naming the knob."""
    with TaskGatewayClient("127.0.0.1:1") as client:
        with pytest.raises(ValueError, match="max_batch must be at least 1"):
            client.publisher(max_batch=0)
        with pytest.raises(ValueError, match="when_full must be 'block' or 'raise'"):
            client.publisher(when_full="drop")


async def test_a_consumer_of_the_batch_sees_the_same_body_as_a_unary_call(
    gateway: RunningGateway, topology: Topology, publishing: Any
) -> None:
    """A task sent through the publisher lands with the body a unary submit would give it."""
    publisher = publishing(gateway.address)
    request = generate_request("same", idempotency_key="k-1")

    batched = await (await publisher.submit(request))
    async with AsyncTaskGatewayClient(gateway.address) as client:
        unary = await client.submit(request)

    first, second = await topology.drain("images.queue")
    assert batched == unary
    assert json.loads(first.body) == json.loads(second.body)


def test_max_batch_over_the_gateways_cap_is_refused_saying_why() -> None:
    """The gateway refuses a PublishBatch of more than 1000 entries (grpc.max_batch_entries):
    a larger max_batch is a ValueError naming max_batch and that cap."""
    with TaskGatewayClient("127.0.0.1:1") as client:
        client.publisher(max_batch=1000)
        with pytest.raises(ValueError, match=r"max_batch must be at most 1000.*max_batch_entries"):
            client.publisher(max_batch=1001)


async def _garbled_entry(call: Call, context: Context) -> bytes:
    """Every entry answered with an error whose detail does not unpack."""
    garbage = AnyProto(type_url="type.googleapis.com/google.rpc.BadRequest", value=b"\xff\xff")
    error = status_pb2.Status(code=3, message="bad", details=[garbage])
    entries = gateway_pb2.PublishBatchRequest.FromString(call.request).entries
    results = [gateway_pb2.TaskResult(index=i, error=error) for i in range(len(entries))]
    return gateway_pb2.PublishBatchResponse(results=results).SerializeToString()


@pytest.mark.parametrize(
    "script", [abort_with_garbled_details, _garbled_entry], ids=["trailer", "entry"]
)
async def test_an_answer_the_client_cannot_read_still_settles_every_task(
    fake_gateway: Any, publishing: Any, script: Any
) -> None:
    """A batch answer that does not parse settles its tasks as OutcomeUnknown (they may have
    been published) rather than leaving their futures, and flush(), waiting forever."""
    fake = await fake_gateway(script)
    publisher = publishing(fake.address, max_latency=0)

    futures = [await publisher.submit(generate_request(f"image-{i}")) for i in range(2)]
    async with hang_guard("every future of the unreadable batch settled"):
        outcomes = await asyncio.gather(*futures, return_exceptions=True)

    assert [type(outcome) for outcome in outcomes] == [OutcomeUnknown, OutcomeUnknown]


def test_a_fresh_task_is_not_sent_with_the_nearly_spent_deadline_of_a_retry() -> None:
    """A retry due with just 0.04 s of its deadline left does not share a call with fresh tasks:
    they are sent with their own remaining deadline, not cut to the retry's."""
    connection = Connection.of(None, None, 1.0, RetryPolicy(initial_backoff=0.05))
    batcher: Batcher[str] = Batcher(BatchSettings(max_latency=0.01), connection)

    def add(name: str, now: float) -> None:
        batcher.add(generic_task("videos.generate", "u", {}, name), name, now)

    add("A", now=0.0)
    (first,) = batcher.due(0.01, flush=False).batches
    refused = TaskGatewayError(grpc.StatusCode.UNAVAILABLE, "broker reconnecting")
    assert batcher.settle(first, Failure(refused, outcome_unknown=False), now=0.9) == []
    for name in ("B0", "B1", "B2"):
        add(name, now=0.93)
    # A's backoff (at most 0.05 s from 0.9) is over, and the Bs are ready.
    batches = batcher.due(0.96, flush=True).batches

    sent = {tuple(p.entry.publish.idempotency_key for p in batch): batch for batch in batches}
    assert set(sent) == {("A",), ("B0", "B1", "B2")}
    _, timeout = batch_request(sent["B0", "B1", "B2"], now=0.96)
    assert timeout == pytest.approx(1.93 - 0.96)


def test_a_publisher_used_in_a_forked_child_refuses_tasks_saying_why() -> None:
    """After os.fork() the child has no sender thread: publish() there raises RuntimeError
    saying so, rather than returning a future that never settles."""
    script = textwrap.dedent(
        """
        import os
        from task_gateway_client import TaskGatewayClient

        client = TaskGatewayClient("127.0.0.1:1")
        publisher = client.publisher()
        child = os.fork()
        if child == 0:
            try:
                publisher.publish("videos.generate", "u", {})
            except RuntimeError as error:
                print("refused:", error, flush=True)
            else:
                print("accepted", flush=True)
            os._exit(0)
        os.waitpid(child, 0)
        client.close()
        """
    )
    # The SDK and the contracts from the checkout, as pytest's own pythonpath has them.
    path = [ROOT / "clients" / "python" / "src", ROOT / "src" / "generated"]
    env = os.environ | {"PYTHONPATH": os.pathsep.join(str(p) for p in path)}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )

    assert "refused:" in done.stdout, done.stdout + done.stderr
    assert "made before a fork" in done.stdout
