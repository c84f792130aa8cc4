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

Every delivery is settled, whatever happens: acked once its handler returned; rejected without
requeue (to the queue's dead-letter exchange, if it has one) when it does not decode or when
its handler failed and `on_error` says so (or `on_error` itself failed); requeued when `on_error`
says so, or when its handler did not finish (it raised CancelledError or another
BaseException, which then goes on).
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import json
import logging
from collections import OrderedDict
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
    # How often this task's handler failed before in this consumer (`consume` counts by
    # task_id), for an on_error policy to go by; 0 from decode() alone. The broker's
    # `message.redelivered` cannot say it: it is set on a message requeued by a consumer that
    # stopped (a deploy) as much as on one requeued after a failure.
    failures: int = field(default=0, compare=False)


class UndecodableMessage(ValueError):
    """A delivery that is not a task of the gateway's: the message names what is wrong."""


def decode(message: AbstractIncomingMessage) -> Task:
    """The task a delivery carries, its payload typed by the message's task type.

    Raises UndecodableMessage when the body is not the gateway's JSON, or the payload does not
    fit its task type's payload message, or reading it fails in any other way (a body nested
    too deep to parse, say). Fields the payload message does not know are ignored, so a
    consumer built against older contracts reads tasks of newer producers.
    """
    try:
        return _decode(message)
    except UndecodableMessage:
        raise
    except Exception as exc:  # e.g. RecursionError from a deeply nested body: still poison
        raise UndecodableMessage(
            f"the delivery could not be decoded: {type(exc).__name__}: {exc}"
        ) from exc


def _decode(message: AbstractIncomingMessage) -> Task:
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
    """Requeue a task the first time its handler fails; dead-letter it when it fails again.

    The failures are those this consumer saw (`Task.failures`), not the broker's redelivered
    flag, which a consumer that stopped holding the task sets too: a task requeued by a deploy
    still gets its one retry. With several consumers on a queue, a task that always fails may
    be retried once by each consumer it reaches before one of them dead-letters it.
    """
    return Disposition.DEAD_LETTER if task.failures > 0 else Disposition.REQUEUE


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
    raises an Exception has its task requeued or dead-lettered as `on_error` decides
    (dead-lettered if `on_error` itself raises); a handler that raises a BaseException
    (CancelledError, KeyboardInterrupt) did not finish: its task is requeued, and the
    exception goes on. Up to `concurrency` handlers run at once: set the channel's
    prefetch_count to at least that.

    It counts how often each task's handler failed (by task_id, for the last 10,000 tasks that
    failed) and hands the count to the handler and to `on_error` as `Task.failures`.

    Cancelling it stops gracefully: no further delivery is taken (those already prefetched
    are requeued), and the handlers under way finish and settle their tasks first.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency!r}")
    slots = asyncio.Semaphore(concurrency)
    running: set[asyncio.Task[None]] = set()
    failures = _Failures()
    try:
        async with queue.iterator() as deliveries:
            # A slot is taken before the next delivery, so that none is held outside both the
            # iterator (which requeues what it holds when it closes) and a handler.
            await slots.acquire()
            async for message in deliveries:
                handling = asyncio.create_task(_handle(message, handler, on_error, failures))
                running.add(handling)
                handling.add_done_callback(running.discard)
                handling.add_done_callback(lambda _: slots.release())
                await slots.acquire()
    finally:
        if running:
            await asyncio.wait(running)


# Failed tasks whose failures a consumer remembers; beyond them the oldest is forgotten (a
# forgotten task that fails again is taken for one that failed for the first time).
_FAILURES_REMEMBERED = 10_000


class _Failures:
    """How often each task's handler failed in one consumer, by task_id, for the last
    `_FAILURES_REMEMBERED` tasks that failed (a task requeued to another consumer is never
    heard of again, so the count must not grow without end)."""

    def __init__(self) -> None:
        self._counts: OrderedDict[str, int] = OrderedDict()

    def of(self, task_id: str) -> int:
        return self._counts.get(task_id, 0)

    def add(self, task_id: str) -> None:
        self._counts[task_id] = self._counts.pop(task_id, 0) + 1
        if len(self._counts) > _FAILURES_REMEMBERED:
            self._counts.popitem(last=False)

    def forget(self, task_id: str) -> None:
        self._counts.pop(task_id, None)


async def _handle(
    message: AbstractIncomingMessage,
    handler: Handler,
    on_error: ErrorPolicy,
    failures: _Failures,
) -> None:
    """Decode, handle and settle one delivery. It raises only what the handler raised that is
    no Exception (a cancellation, a KeyboardInterrupt), once the task is requeued."""
    try:
        disposition = await _run(message, handler, on_error, failures)
    except BaseException:
        # The handler did not finish: the task goes back to the queue, to be done again.
        await _settle(message, Disposition.REQUEUE)
        raise
    await _settle(message, disposition)


async def _run(
    message: AbstractIncomingMessage,
    handler: Handler,
    on_error: ErrorPolicy,
    failures: _Failures,
) -> Disposition | None:
    """What becomes of a delivery: None to ack it (its handler returned), or how to reject it."""
    try:
        task = decode(message)
    except UndecodableMessage as error:
        log.warning("rejected an undecodable message %s: %s", message.message_id, error)
        return Disposition.DEAD_LETTER
    if failed := failures.of(task.task_id):  # most tasks never failed: no copy for them
        task = dataclasses.replace(task, failures=failed)
    try:
        await handler(task)
    except Exception as error:
        failures.add(task.task_id)
        disposition = _decide(on_error, task, error)
        log.exception("task %s failed: %s it", task.task_id, disposition.value)
        if disposition is Disposition.DEAD_LETTER:
            failures.forget(task.task_id)
        return disposition
    failures.forget(task.task_id)
    return None


def _decide(on_error: ErrorPolicy, task: Task, error: Exception) -> Disposition:
    """What `on_error` says of a failed task; dead-letter when it fails itself, since a task
    whose policy cannot be run would otherwise be left unsettled."""
    try:
        disposition = on_error(task, error)
        if not isinstance(disposition, Disposition):
            raise TypeError(f"on_error returned {disposition!r}, not a Disposition")
    except Exception:
        log.exception("the on_error policy failed on task %s: dead-lettering it", task.task_id)
        return Disposition.DEAD_LETTER
    return disposition


async def _settle(message: AbstractIncomingMessage, disposition: Disposition | None) -> None:
    """Ack the delivery (disposition None) or reject it as `disposition` says."""
    try:
        if disposition is None:
            await message.ack()
        else:
            await message.reject(requeue=disposition is Disposition.REQUEUE)
    except Exception:
        # The channel went away under the ack or reject: the broker redelivers the message.
        log.exception("could not settle message %s", message.message_id)


def _text(value: Any) -> str | None:
    """A header value as text: aio-pika hands AMQP long strings over as bytes."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None
