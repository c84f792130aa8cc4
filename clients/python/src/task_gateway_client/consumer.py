"""For the services that do the work: read the gateway's tasks from a RabbitMQ queue.

Needs the `consumer` extra (`pip install 'task-gateway-client[consumer]'`, i.e. aio-pika).

```python
import aio_pika
from task_gateway_client.consumer import Task, consume

async def generate(task: Task) -> None:
    ...  # task.payload is an images_pb2.GeneratePayload

connection = await aio_pika.connect("amqp://...")
channel = await connection.channel()
await channel.set_qos(prefetch_count=8)
queue = await channel.get_queue("images.queue")
await consume(queue, generate, concurrency=8)
```

The gateway publishes every task as JSON, `{"task_id", "user_id", "task_type", "payload"}`,
with `message_id` = task id, `type` = task type and the headers `task_key` and (when the
call carried one) `traceparent`. The task type says which payload message of the contracts
the payload is; a task type without one (routed by the gateway's configuration) keeps its
payload as a dict. A task may arrive twice (a retry after an unknown outcome, a redelivery):
it has the same `task_id` each time, so de-duplicate by it.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from task_gateway_client._contracts import payload_types

try:
    from aio_pika.abc import AbstractIncomingMessage, AbstractQueue
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(
        "task_gateway_client.consumer needs aio-pika: pip install 'task-gateway-client[consumer]'"
    ) from exc

__all__ = [
    "Disposition",
    "ErrorPolicy",
    "Task",
    "UndecodableMessage",
    "consume",
    "dead_letter",
    "decode",
    "requeue",
    "requeue_once",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Task:
    """A task as its consumer sees it."""

    # The id the gateway gave the task, the same for every copy of it: de-duplicate by it.
    task_id: str
    user_id: str
    task_type: str
    # The typed payload message of the task type (e.g. images_pb2.GeneratePayload), or a dict
    # for a task type without one.
    payload: Message | dict[str, Any]
    # user_id:service_name:task_id, as the producer got it (header task_key).
    task_key: str | None
    # The W3C trace context of the call that made the task (header traceparent), to continue
    # the trace in the consumer.
    traceparent: str | None
    # The delivery itself, for what this class does not carry.
    message: AbstractIncomingMessage = field(repr=False, compare=False)


class UndecodableMessage(ValueError):
    """A delivery that is not a task of the gateway's: the message names what is wrong."""


def decode(message: AbstractIncomingMessage) -> Task:
    """The task a delivery carries, its payload typed by the message's task type.

    Raises UndecodableMessage when the body is not the gateway's JSON, or the payload does not
    fit its task type's payload message. Fields the payload message does not know are
    ignored, so a consumer built against older contracts reads tasks of newer producers.
    """
    try:
        body = json.loads(message.body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UndecodableMessage(f"the body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise UndecodableMessage(f"the body is a JSON {type(body).__name__}, not an object")
    for name in ("task_id", "user_id", "task_type"):
        if not isinstance(body.get(name), str):
            raise UndecodableMessage(f"the body has no string {name!r}")
    payload = body.get("payload")
    if not isinstance(payload, dict):
        raise UndecodableMessage("the body's 'payload' is not a JSON object")
    # The AMQP type property names the task type; messages without it use the body's.
    task_type = message.type or body["task_type"]
    if task_type != body["task_type"]:
        raise UndecodableMessage(
            f"the message type {task_type!r} differs from the body's task_type "
            f"{body['task_type']!r}"
        )
    payload_type = payload_types().get(task_type)
    typed: Message | dict[str, Any] = payload
    if payload_type is not None:
        try:
            typed = json_format.ParseDict(payload, payload_type(), ignore_unknown_fields=True)
        except json_format.ParseError as exc:
            raise UndecodableMessage(
                f"the payload is not a {payload_type.DESCRIPTOR.full_name}: {exc}"
            ) from None
    headers = message.headers or {}
    return Task(
        task_id=body["task_id"],
        user_id=body["user_id"],
        task_type=task_type,
        payload=typed,
        task_key=_text(headers.get("task_key")),
        traceparent=_text(headers.get("traceparent")),
        message=message,
    )


class Disposition(enum.Enum):
    """What becomes of a task whose handler raised."""

    # Back into the queue, to be delivered again (to this consumer or another).
    REQUEUE = "requeue"
    # Rejected without requeue: to the queue's dead-letter exchange, or dropped if it has none.
    DEAD_LETTER = "dead-letter"


# Decides, from the task and the handler's exception, what becomes of the task.
ErrorPolicy = Callable[[Task, Exception], Disposition]


def requeue_once(task: Task, error: Exception) -> Disposition:
    """Requeue a task the first time its handler fails; dead-letter it when it fails again."""
    return Disposition.DEAD_LETTER if task.message.redelivered else Disposition.REQUEUE


def requeue(task: Task, error: Exception) -> Disposition:
    """Always requeue (a handler that always fails makes the task go round forever)."""
    return Disposition.REQUEUE


def dead_letter(task: Task, error: Exception) -> Disposition:
    """Never requeue: every failed task goes to the dead-letter exchange."""
    return Disposition.DEAD_LETTER


Handler = Callable[[Task], Awaitable[None]]


async def consume(
    queue: AbstractQueue,
    handler: Handler,
    *,
    on_error: ErrorPolicy = requeue_once,
    concurrency: int = 1,
) -> None:
    """Run `handler` on every task of the queue until cancelled.

    A task is acked once its handler returned; a delivery that does not decode is rejected
    without requeue (to the queue's dead-letter exchange, if it has one); a handler that
    raises has its task requeued or dead-lettered as `on_error` decides. Up to `concurrency`
    handlers run at once: set the channel's prefetch_count to at least that.

    Cancelling it stops gracefully: no further delivery is taken (those already prefetched
    are requeued), and the handlers under way finish and settle their tasks first.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency!r}")
    slots = asyncio.Semaphore(concurrency)
    running: set[asyncio.Task[None]] = set()
    try:
        async with queue.iterator() as deliveries:
            # A slot is taken before the next delivery, so that none is held outside both the
            # iterator (which requeues what it holds when it closes) and a handler.
            await slots.acquire()
            async for message in deliveries:
                handling = asyncio.create_task(_handle(message, handler, on_error))
                running.add(handling)
                handling.add_done_callback(running.discard)
                handling.add_done_callback(lambda _: slots.release())
                await slots.acquire()
    finally:
        if running:
            await asyncio.wait(running)


async def _handle(
    message: AbstractIncomingMessage, handler: Handler, on_error: ErrorPolicy
) -> None:
    """Decode, handle and settle one delivery; never raises (it has no caller to raise to)."""
    try:
        await _settle(message, handler, on_error)
    except Exception:
        # The channel went away under the ack or reject: the broker redelivers the message.
        log.exception("could not settle message %s", message.message_id)


async def _settle(
    message: AbstractIncomingMessage, handler: Handler, on_error: ErrorPolicy
) -> None:
    try:
        task = decode(message)
    except UndecodableMessage as error:
        log.warning("rejected an undecodable message %s: %s", message.message_id, error)
        await message.reject(requeue=False)
        return
    try:
        await handler(task)
    except Exception as error:
        disposition = on_error(task, error)
        log.exception("task %s failed: %s it", task.task_id, disposition.value)
        await message.reject(requeue=disposition is Disposition.REQUEUE)
        return
    await message.ack()


def _text(value: Any) -> str | None:
    """A header value as text: aio-pika hands AMQP long strings over as bytes."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None
