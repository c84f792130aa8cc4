"""The batching publisher's bookkeeping, free of I/O: which tasks go out together, and when.

A task waits at most `max_latency` for others to share its PublishBatch call; a batch leaves
at once when it holds `max_batch` tasks or `max_batch_bytes` of entries. Each entry of the
answer settles its own task: a task key, a final error, or another attempt after a backoff
(with the same idempotency key, so the gateway derives the same task id). The threaded and
the asyncio publishers drive this with their own clocks, locks and calls.

A batch call's timeout is what remains of the earliest deadline among its tasks, so tasks share
a call only with tasks whose deadlines are close: a retry, its deadline partly spent, does not
cut short the call of fresh tasks (which would fail with DEADLINE_EXCEEDED, an unknown outcome,
and be sent again).
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import grpc
from taskgateway_api.taskgateway.v1 import gateway_pb2

from task_gateway_client._connection import Connection
from task_gateway_client._errors import (
    Failure,
    PublisherFull,
    TaskGatewayError,
    client_failure,
    from_status,
)
from task_gateway_client._retry import Attempts
from task_gateway_client._tasks import Task

__all__ = [
    "GATEWAY_MAX_BATCH_ENTRIES",
    "BatchSettings",
    "Batcher",
    "Pending",
    "Step",
    "batch_request",
    "resolve",
]

# The most entries the gateway takes in one PublishBatch by default (its
# grpc.max_batch_entries); it refuses a larger batch as a whole.
GATEWAY_MAX_BATCH_ENTRIES = 1000
# Seconds by which the deadlines of the tasks of one call may differ, at least: tasks published
# within max_latency of each other share a call (when max_latency is larger, it is the bound),
# and no task's call gets less than its own remaining deadline minus this.
_MIN_DEADLINE_SPREAD = 0.1

Handle = TypeVar("Handle")
# A task's outcome: its task key, or the error its caller gets.
Outcome = str | TaskGatewayError


@dataclass(frozen=True)
class BatchSettings:
    """How tasks are gathered into PublishBatch calls (see `TaskGatewayClient.publisher`)."""

    max_batch: int = 100
    max_latency: float = 0.01
    max_batch_bytes: int = 512 * 1024
    max_outstanding: int = 1000
    when_full: str = "block"

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_batch_bytes", "max_outstanding"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)!r}")
        if self.max_batch > GATEWAY_MAX_BATCH_ENTRIES:
            raise ValueError(
                f"max_batch must be at most {GATEWAY_MAX_BATCH_ENTRIES}, got {self.max_batch!r}: "
                "the gateway refuses a PublishBatch of more entries (its grpc.max_batch_entries "
                f"default is {GATEWAY_MAX_BATCH_ENTRIES})"
            )
        if self.max_latency < 0:
            raise ValueError(f"max_latency must be 0 or more seconds, got {self.max_latency!r}")
        if self.when_full not in ("block", "raise"):
            raise ValueError(f"when_full must be 'block' or 'raise', got {self.when_full!r}")

    def admits(self, outstanding: int, *, closed: bool) -> bool:
        """Whether publish() may queue its task now, with `outstanding` tasks awaiting their
        outcome; False: it waits for room (when_full="block"), then asks again.

        Raises RuntimeError when the publisher is closed, PublisherFull when it is full and
        when_full="raise".
        """
        if closed:
            raise RuntimeError("the publisher is closed")
        if outstanding < self.max_outstanding:
            return True
        if self.when_full == "raise":
            raise PublisherFull(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the publisher already holds max_outstanding={self.max_outstanding} tasks; "
                "nothing was sent",
            )
        return False


@dataclass(eq=False)
class Pending(Generic[Handle]):
    """A task between its publish() and its outcome; `handle` is the caller's future."""

    handle: Handle
    attempts: Attempts
    entry: gateway_pb2.TaskEntry
    size: int
    # time.monotonic() by which it leaves in a batch, full or not: max_latency after publish(),
    # or the end of its backoff for a retry.
    due_at: float


@dataclass
class Step(Generic[Handle]):
    """What the batcher decided at one moment: batches to send, tasks whose outcome is known."""

    batches: list[list[Pending[Handle]]] = field(default_factory=list)
    outcomes: list[tuple[Handle, Outcome]] = field(default_factory=list)


class Batcher(Generic[Handle]):
    """The tasks of one publisher: those ready to go, and those waiting out a backoff."""

    def __init__(self, settings: BatchSettings, connection: Connection) -> None:
        self._settings = settings
        self._connection = connection  # its deadline: each task's, from publish() to its outcome
        self._ready: deque[Pending[Handle]] = deque()
        self._ready_bytes = 0
        # Tasks waiting out a backoff, by the time they may go again.
        self._backing_off: list[tuple[float, int, Pending[Handle]]] = []
        self._order = itertools.count()
        # How far apart the deadlines of the tasks of one call may be.
        self._deadline_spread = max(settings.max_latency, _MIN_DEADLINE_SPREAD)

    def add(self, task: Task, handle: Handle, now: float) -> None:
        entry = task.entry()
        attempts = self._connection.attempts(task, now=now)
        due_at = now + self._settings.max_latency
        pending = Pending(handle, attempts, entry, entry.ByteSize(), due_at)
        self._ready.append(pending)
        self._ready_bytes += pending.size

    def due(self, now: float, *, flush: bool) -> Step[Handle]:
        """The batches to send now (every ready task when flushing), and tasks out of time.

        The ready tasks are kept in the order of their deadlines, and a batch takes the next
        ones only while their deadline is within `_deadline_spread` of its first task's.
        """
        retries = []
        while self._backing_off and self._backing_off[0][0] <= now:
            retries.append(heapq.heappop(self._backing_off)[2])
        if retries:
            # Retries were published before every ready task, so their deadlines come first:
            # they go to the front, by deadline (fresh tasks are appended in the order of theirs).
            retries.sort(key=lambda pending: pending.attempts.deadline)
            self._ready.extendleft(reversed(retries))
            self._ready_bytes += sum(pending.size for pending in retries)
        step: Step[Handle] = Step()
        settings = self._settings
        while self._ready and (
            flush
            or len(self._ready) >= settings.max_batch
            or self._ready_bytes >= settings.max_batch_bytes
            or now >= self._ready[0].due_at
        ):
            batch: list[Pending[Handle]] = []
            size = 0
            while self._ready and len(batch) < settings.max_batch:
                pending = self._ready[0]
                if batch and (
                    size + pending.size > settings.max_batch_bytes
                    or abs(pending.attempts.deadline - batch[0].attempts.deadline)
                    > self._deadline_spread
                ):
                    break
                self._ready.popleft()
                self._ready_bytes -= pending.size
                if pending.attempts.timeout(now) is None:
                    step.outcomes.append((pending.handle, pending.attempts.final_error()))
                    continue
                batch.append(pending)
                size += pending.size
            if batch:
                step.batches.append(batch)
        return step

    def wait(self, now: float) -> float | None:
        """Seconds until a batch may be due with no new task, or None when nothing waits."""
        times = [at for at, _, _ in self._backing_off[:1]]
        if self._ready:
            times.append(self._ready[0].due_at)
        return max(0.0, min(times) - now) if times else None

    def settle(
        self,
        batch: Sequence[Pending[Handle]],
        answer: gateway_pb2.PublishBatchResponse | Failure,
        now: float,
    ) -> list[tuple[Handle, Outcome]]:
        """Take the answer to a batch call; return the tasks whose outcome is now known.

        The others wait out their backoff and go again with a later batch.
        """
        if isinstance(answer, Failure):  # the call as a whole failed: so did each task
            failures: list[Failure | str] = [answer] * len(batch)
        else:
            try:
                failures = _per_task(answer, len(batch))
            except Exception as error:  # e.g. an entry's details that do not parse
                # An answer the client cannot read: the tasks may have been published.
                failures = [client_failure(error, sent=True)] * len(batch)
        outcomes: list[tuple[Handle, Outcome]] = []
        # One draw of jitter for the batch: its tasks that go again go together, in one batch,
        # rather than each on its own when the gateway is struggling.
        jitter = random.random()
        for pending, result in zip(batch, failures, strict=True):
            if isinstance(result, str):
                outcomes.append((pending.handle, result))
                continue
            delay = pending.attempts.failed(result, now, jitter)
            if delay is None:
                outcomes.append((pending.handle, pending.attempts.final_error()))
            else:
                pending.due_at = now + delay
                heapq.heappush(self._backing_off, (pending.due_at, next(self._order), pending))
        return outcomes


def batch_request(
    batch: Sequence[Pending[Any]], now: float
) -> tuple[gateway_pb2.PublishBatchRequest, float]:
    """The PublishBatch request of a batch, and the call's timeout: what remains of the most
    pressed task's deadline (close to every task's own, as `Batcher.due` groups them)."""
    request = gateway_pb2.PublishBatchRequest(entries=[p.entry for p in batch])
    # At least a moment: a task is only sent while it has time left, and grpc answers a
    # timeout already past without sending anything.
    return request, max(min(p.attempts.deadline for p in batch) - now, 0.001)


class TaskFuture(Protocol):
    """A publisher's future of a task key: a concurrent.futures.Future or an asyncio.Future."""

    def cancelled(self) -> bool: ...
    def set_result(self, result: str, /) -> None: ...
    def set_exception(self, exception: BaseException, /) -> None: ...


def resolve(outcomes: Iterable[tuple[TaskFuture, Outcome]]) -> None:
    """Settle each future with its task key or its error."""
    for future, outcome in outcomes:
        # An asyncio caller gave up waiting; the task went on regardless. (A publisher's
        # concurrent future is running from the start, and cannot be cancelled.)
        if future.cancelled():
            continue
        if isinstance(outcome, str):
            future.set_result(outcome)
        else:
            future.set_exception(outcome)


def _per_task(response: gateway_pb2.PublishBatchResponse, count: int) -> list[Failure | str]:
    """Each entry's task key, or its failure; an answer missing an entry leaves it unknown."""
    results: list[Failure | str] = [_missing] * count
    for result in response.results:
        if result.index < count:
            if result.WhichOneof("result") == "task_key":
                results[result.index] = result.task_key
            else:
                results[result.index] = from_status(result.error)
    return results


# A batch answer without an entry's result (a gateway bug): it may have been published.
_missing = Failure(
    TaskGatewayError(
        grpc.StatusCode.INTERNAL, "the gateway's batch answer has no result for this task"
    ),
    outcome_unknown=True,
)
