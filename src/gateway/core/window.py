"""Many tasks of one call (a batch or a stream) on their way to the broker at once.

A window holds at most `size` tasks awaiting their confirm or the caller's taking their
outcome; a stream waits for `room` before it reads on, and gRPC's flow control then slows
the client, whether the broker or the client's reading of answers is the slow part.
Outcomes are collected as confirms arrive, by their index in the call, and taken in groups:
a stream answers all the tasks that settled together in one message.

Deliberately no coroutine, shield or timeout per task: a confirm's done-callback settles its
task, and one timer per window expires tasks whose time ran out. This is the hot path of
batches and streams (see docs/performance.md).
"""

from __future__ import annotations

import asyncio

from gateway.core.context import CallContext
from gateway.core.ingest import Accepted, Ingestor, Publication, TaskRequest, deadline_exceeded
from gateway.errors import GatewayError

__all__ = ["Outcome", "PublishWindow"]

# The event loop may run a timer a little before its time (uvloop counts in milliseconds);
# a task this close to its time counts as expired rather than re-arming the timer at once.
_CLOCK_SLACK = 0.001

# A task's index in its call, and its outcome.
Outcome = tuple[int, Accepted | GatewayError]


class PublishWindow:
    def __init__(self, ingestor: Ingestor, context: CallContext, *, size: int) -> None:
        self._ingestor = ingestor
        self._context = context
        self._size = size
        self._loop = asyncio.get_running_loop()
        # Publications awaiting their confirm, by index, with when their time runs out (loop
        # time) and how long they were given. In the order they were added, which is also the
        # order their time runs out: each gets min(the call's deadline, now + the publish cap).
        self._pending: dict[int, tuple[Publication, float, float]] = {}
        self._settled: list[Outcome] = []
        self._has_room = asyncio.Event()
        self._has_settled = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._finished = False  # no more tasks will be added

    @property
    def full(self) -> bool:
        """As many tasks as the window holds await their confirm or their answer."""
        return len(self._pending) + len(self._settled) >= self._size

    async def room(self) -> None:
        """Wait until the window has room: outcomes taken make room, not only confirms."""
        while self.full:
            self._has_room.clear()
            await self._has_room.wait()

    def add(self, index: int, task: TaskRequest | GatewayError) -> None:
        """Start publishing a task, or record the error it already is."""
        if isinstance(task, GatewayError):
            self._record(index, task)
            return
        publication = self._ingestor.publish(task, self._context)
        if publication.confirm.done():
            self._record(index, publication.settle())
            return
        limit = self._ingestor.time_limit(self._context.remaining())
        self._pending[index] = (publication, self._loop.time() + limit, limit)
        publication.confirm.add_done_callback(lambda _: self._confirmed(index))
        if self._timer is None:
            self._arm()

    def finish(self) -> None:
        """No more tasks will be added: `take` returns [] once the rest are taken."""
        self._finished = True
        self._has_settled.set()

    def take_nowait(self) -> list[Outcome]:
        """The outcomes settled since the last take."""
        settled, self._settled = self._settled, []
        if settled:
            self._has_room.set()
        return settled

    async def take(self) -> list[Outcome]:
        """The outcomes settled since the last take, waiting for one; [] when all are taken."""
        while not self._settled and not (self._finished and not self._pending):
            self._has_settled.clear()
            await self._has_settled.wait()
        return self.take_nowait()

    def close(self) -> None:
        """The caller went away: log the tasks still pending as cancelled, stop the timer.

        Their publishes go on in the background; only their outcome has no one to go to.
        """
        if self._timer is not None:
            self._timer.cancel()
        for publication, _, _ in self._pending.values():
            publication.cancelled()
        self._pending.clear()

    def _confirmed(self, index: int) -> None:
        entry = self._pending.pop(index, None)
        if entry is not None:  # else it expired or the window closed
            self._record(index, entry[0].settle())

    def _record(self, index: int, outcome: Accepted | GatewayError) -> None:
        self._settled.append((index, outcome))
        self._has_settled.set()

    def _arm(self) -> None:
        """Wake up when the oldest pending task's time runs out."""
        for _, expires, _ in self._pending.values():
            self._timer = self._loop.call_at(expires, self._expire)
            return
        self._timer = None

    def _expire(self) -> None:
        now = self._loop.time() + _CLOCK_SLACK
        expired = []
        for index, (_, expires, _) in self._pending.items():
            if expires > now:
                break
            expired.append(index)
        for index in expired:
            publication, _, limit = self._pending.pop(index)
            self._record(index, publication.settle(deadline_exceeded(limit)))
        self._arm()
