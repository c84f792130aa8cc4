"""The consumer helper against RabbitMQ, on messages the gateway published: decode, ack, reject
to a dead-letter queue, requeue."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue
from task_gateway_client import AsyncTaskGatewayClient
from task_gateway_client.consumer import (
    ErrorPolicy,
    Task,
    UndecodableMessage,
    consume,
    dead_letter,
    decode,
    requeue_once,
)
from taskgateway_api.images.v1 import images_pb2, images_pb2_grpc

from tests.clients.conftest import generate_request, task_id
from tests.conftest import RunningGateway
from tests.support.rabbitmq import Topology
from tests.support.waits import hang_guard

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
WORK, DEAD = "clients.work", "clients.dead"
# A body nested deeper than the JSON parser recurses: json.loads raises RecursionError on it.
_TOO_DEEP = b'{"task_id": "t", "payload": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"


async def _published(gateway: RunningGateway, topology: Topology) -> AbstractIncomingMessage:
    """A task as the gateway publishes it, with a traceparent, taken from images.queue."""
    stub = images_pb2_grpc.ImagesServiceStub(gateway.channel)
    await stub.Generate(generate_request("fox"), metadata=[("traceparent", TRACEPARENT)])
    (message,) = await topology.drain("images.queue")
    return message


async def test_a_gateway_task_decodes_with_its_typed_payload_and_headers(
    gateway: RunningGateway, topology: Topology
) -> None:
    """decode() gives the task id, the typed payload, the task key and the traceparent."""
    message = await _published(gateway, topology)

    task = decode(message)

    assert task.task_id == message.message_id
    assert task.task_type == "images.generate"
    assert task.user_id == "12345"
    assert task.payload == generate_request("fox").payload
    assert isinstance(task.payload, images_pb2.GeneratePayload)
    assert task.task_key == f"12345:image-generation:{task.task_id}"
    assert task.traceparent == TRACEPARENT


@dataclass
class WorkQueue:
    """A queue that dead-letters to another, on a channel of the consumer's own."""

    channel: AbstractChannel
    queue: AbstractQueue
    inspect: AbstractChannel

    async def put(self, body: bytes, **properties: Any) -> None:
        await self.inspect.default_exchange.publish(
            aio_pika.Message(body, **properties), routing_key=WORK
        )

    async def put_copy(self, message: AbstractIncomingMessage) -> None:
        """Put a copy of a delivered message, body and properties, into the work queue."""
        await self.put(
            message.body,
            message_id=message.message_id,
            type=message.type,
            headers=message.headers,
            content_type=message.content_type,
        )

    async def next_dead(self) -> AbstractIncomingMessage:
        """Wait for the next message in the dead-letter queue."""
        dead = await self.inspect.get_queue(DEAD)
        async with (
            hang_guard("a message reached the dead-letter queue"),
            dead.iterator() as messages,
        ):
            async for message in messages:
                await message.ack()
                return message
        raise AssertionError("the dead-letter queue closed")

    async def left(self) -> tuple[int, int]:
        """(messages left in the work queue, in the dead-letter queue), none unacked."""
        await self.channel.close()  # what the consumer did not ack goes back to the queue
        work = await self.inspect.declare_queue(WORK, passive=True)
        dead = await self.inspect.declare_queue(DEAD, passive=True)
        return work.declaration_result.message_count, dead.declaration_result.message_count


@pytest.fixture
async def work_queue(rabbitmq_url: str, topology: Topology) -> AsyncIterator[WorkQueue]:
    """`clients.work`, dead-lettering to `clients.dead` through a fanout exchange of the vhost."""
    inspect = topology.channel
    dead_letters = await inspect.declare_exchange(DEAD, aio_pika.ExchangeType.FANOUT)
    dead = await inspect.declare_queue(DEAD)
    await dead.bind(dead_letters)
    work = await inspect.declare_queue(WORK, arguments={"x-dead-letter-exchange": DEAD})
    connection = await aio_pika.connect(rabbitmq_url)
    try:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=4)
        yield WorkQueue(channel, await channel.get_queue(WORK), inspect)
    finally:
        await connection.close()
        await work.delete(if_unused=False, if_empty=False)
        await dead.delete(if_unused=False, if_empty=False)
        await dead_letters.delete()


async def _stop(consuming: asyncio.Task[None]) -> None:
    consuming.cancel()
    with pytest.raises(asyncio.CancelledError):
        await consuming


async def _consume_failing_once(
    work_queue: WorkQueue, fail: Callable[[], Awaitable[None]], on_error: ErrorPolicy, what: str
) -> list[tuple[str, bool]]:
    """Consume with a handler that fails (by `fail`) on its first delivery and returns on the
    next, until it returned; (task_id, redelivered) of each delivery. `what`: the hang guard's."""
    deliveries: list[tuple[str, bool]] = []
    succeeded = asyncio.Event()

    async def handler(task: Task) -> None:
        deliveries.append((task.task_id, task.message.redelivered))
        if len(deliveries) == 1:
            await fail()
        succeeded.set()

    consuming = asyncio.create_task(consume(work_queue.queue, handler, on_error=on_error))
    async with hang_guard(what):
        await succeeded.wait()
    await _stop(consuming)
    return deliveries


async def test_consume_acks_a_handled_task_and_dead_letters_an_undecodable_message(
    gateway: RunningGateway, topology: Topology, work_queue: WorkQueue
) -> None:
    """The task reaches the handler and is acked; a body that is not JSON is dead-lettered."""
    await work_queue.put_copy(await _published(gateway, topology))
    await work_queue.put(b"not json", message_id="garbage")
    handled: list[Task] = []
    seen = asyncio.Event()

    async def handler(task: Task) -> None:
        handled.append(task)
        seen.set()

    consuming = asyncio.create_task(consume(work_queue.queue, handler))
    dead = await work_queue.next_dead()
    async with hang_guard("the handler got the task"):
        await seen.wait()
    await _stop(consuming)

    assert [t.payload for t in handled] == [generate_request("fox").payload]
    assert (dead.message_id, dead.body) == ("garbage", b"not json")
    assert await work_queue.left() == (0, 0)


async def test_a_failed_task_is_requeued_and_acked_once_its_handler_succeeds(
    gateway: RunningGateway, topology: Topology, work_queue: WorkQueue
) -> None:
    """The handler fails once: the task comes back redelivered, succeeds, and is acked."""
    await work_queue.put_copy(await _published(gateway, topology))

    async def busy() -> None:
        raise RuntimeError("the image service is busy")

    deliveries = await _consume_failing_once(
        work_queue, busy, requeue_once, "the handler succeeded on the redelivered task"
    )

    ((first_id, first_redelivered), (second_id, second_redelivered)) = deliveries
    assert first_id == second_id
    assert (first_redelivered, second_redelivered) == (False, True)
    assert await work_queue.left() == (0, 0)


@pytest.mark.parametrize(
    ("policy", "deliveries"),
    [(requeue_once, 2), (dead_letter, 1)],
    ids=["requeue_once", "dead_letter"],
)
async def test_a_task_whose_handler_keeps_failing_is_dead_lettered_by_the_policy(
    gateway: RunningGateway, topology: Topology, work_queue: WorkQueue, policy: Any, deliveries: int
) -> None:
    """requeue_once dead-letters at the second failure, dead_letter at the first."""
    await work_queue.put_copy(await _published(gateway, topology))
    seen: list[str] = []

    async def handler(task: Task) -> None:
        seen.append(task.task_id)
        raise RuntimeError("the image service refuses this task")

    consuming = asyncio.create_task(consume(work_queue.queue, handler, on_error=policy))
    dead = await work_queue.next_dead()
    await _stop(consuming)

    assert len(seen) == deliveries
    assert dead.message_id == seen[0]
    assert await work_queue.left() == (0, 0)


async def test_a_task_type_without_a_payload_message_decodes_to_a_dict(
    work_queue: WorkQueue,
) -> None:
    """An untyped task type (routed by configuration) keeps its payload as JSON."""
    body = {"task_id": "t-1", "user_id": "7", "task_type": "reports.daily", "payload": {"day": 3}}
    await work_queue.put(json.dumps(body).encode(), message_id="t-1", type="reports.daily")

    message = await work_queue.queue.get(timeout=5)
    task = decode(message)
    await message.ack()

    assert (task.task_id, task.task_type, task.payload) == ("t-1", "reports.daily", {"day": 3})
    assert (task.task_key, task.traceparent) == (None, None)


@pytest.mark.parametrize(
    ("body", "message_type", "reason"),
    [
        (b"\xff", "images.generate", "the body is not JSON"),
        (b"[1]", "images.generate", "the body is a JSON list, not an object"),
        (
            b'{"task_id": "t", "user_id": "u", "task_type": "images.generate", "payload": {}}',
            "videos.generate",
            "the message type 'videos.generate' differs from the body's task_type",
        ),
        (
            b'{"task_id": "t", "user_id": "u", "task_type": "images.generate",'
            b' "payload": {"width": "wide"}}',
            "images.generate",
            "the payload is not a images.v1.GeneratePayload",
        ),
        (_TOO_DEEP, "images.generate", "the delivery could not be decoded: RecursionError"),
    ],
    ids=["not-json", "not-an-object", "type-mismatch", "payload-mismatch", "too-deep"],
)
async def test_an_undecodable_delivery_is_refused_with_the_reason(
    work_queue: WorkQueue, body: bytes, message_type: str, reason: str
) -> None:
    """decode() raises UndecodableMessage saying what is wrong with the delivery."""
    await work_queue.put(body, type=message_type)
    message = await work_queue.queue.get(timeout=5)
    await message.ack()

    with pytest.raises(UndecodableMessage, match=reason):
        decode(message)


async def test_tasks_published_by_the_client_reach_the_consumer_by_task_id(
    gateway: RunningGateway, topology: Topology
) -> None:
    """A consumer of images.queue gets each published task once, by the task id of its key."""
    async with AsyncTaskGatewayClient(gateway.address) as client:
        keys = [await client.submit(generate_request(f"image-{i}")) for i in range(3)]
    queue = await topology.channel.get_queue("images.queue")
    got: list[Task] = []
    all_in = asyncio.Event()

    async def handler(task: Task) -> None:
        got.append(task)
        if len(got) == len(keys):
            all_in.set()

    consuming = asyncio.create_task(consume(queue, handler, concurrency=3))
    async with hang_guard(f"the consumer got all {len(keys)} tasks"):
        await all_in.wait()
    await _stop(consuming)

    assert sorted(t.task_id for t in got) == sorted(task_id(k) for k in keys)


def _body(task_id: str) -> bytes:
    """A task's body as the gateway writes it, of an untyped task type."""
    body = {"task_id": task_id, "user_id": "7", "task_type": "reports.daily", "payload": {}}
    return json.dumps(body).encode()


async def test_a_delivery_whose_decoding_raises_unexpectedly_is_dead_lettered(
    work_queue: WorkQueue,
) -> None:
    """A body that makes the JSON parser itself fail (RecursionError) is dead-lettered, not
    left unsettled; the consumer goes on with the next task."""
    await work_queue.put(_TOO_DEEP, message_id="too-deep")
    await work_queue.put(_body("t-after"), message_id="t-after")
    handled = asyncio.Event()

    async def handler(task: Task) -> None:
        handled.set()

    consuming = asyncio.create_task(consume(work_queue.queue, handler))
    dead = await work_queue.next_dead()
    async with hang_guard("the handler got the task after the poison"):
        await handled.wait()
    await _stop(consuming)

    assert dead.message_id == "too-deep"
    assert await work_queue.left() == (0, 0)


async def test_a_task_whose_error_policy_raises_is_dead_lettered(work_queue: WorkQueue) -> None:
    """When on_error itself raises, the task is dead-lettered rather than left unsettled."""
    await work_queue.put(_body("t-1"), message_id="t-1")

    async def handler(task: Task) -> None:
        raise RuntimeError("the report service failed")

    def policy(task: Task, error: Exception) -> Any:
        raise KeyError("a bug in the policy")

    consuming = asyncio.create_task(consume(work_queue.queue, handler, on_error=policy))
    dead = await work_queue.next_dead()
    await _stop(consuming)

    assert dead.message_id == "t-1"
    assert await work_queue.left() == (0, 0)


async def test_a_task_whose_handler_is_cancelled_is_requeued_and_handled_again(
    work_queue: WorkQueue,
) -> None:
    """A handler that ends in CancelledError did not finish: its task goes back to the queue
    (not to the dead letters, not left unsettled) and is handled again."""
    await work_queue.put(_body("t-1"), message_id="t-1")

    async def cancelled() -> None:
        inner = asyncio.get_running_loop().create_future()
        inner.cancel()
        await inner  # e.g. a cancelled request of the handler's own: CancelledError

    deliveries = await _consume_failing_once(
        work_queue, cancelled, dead_letter, "the handler got the requeued task again"
    )

    assert deliveries == [("t-1", False), ("t-1", True)]
    assert await work_queue.left() == (0, 0)


async def test_a_task_requeued_by_a_stopping_consumer_still_gets_its_retry(
    work_queue: WorkQueue,
) -> None:
    """A task that comes back redelivered because a consumer stopped holding it (a deploy), not
    because it failed, is requeued at its first failure under requeue_once, and then handled."""
    await work_queue.put(_body("t-1"), message_id="t-1")
    held = await work_queue.queue.get(timeout=5)  # a consumer took it, then stopped
    await held.reject(requeue=True)

    async def restarting() -> None:
        raise ConnectionError("the report service is restarting")

    deliveries = await _consume_failing_once(
        work_queue, restarting, requeue_once, "the handler succeeded on its retry"
    )

    assert deliveries == [("t-1", True), ("t-1", True)]
    assert await work_queue.left() == (0, 0)
