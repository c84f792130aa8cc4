"""gateway.app.health: the gateway's serving state, across its workers, delivered in order."""

from __future__ import annotations

import asyncio

from gateway.app.health import Health
from gateway.app.workers import WorkerStates
from gateway.broker.memory import Definitions, MemoryBroker
from gateway.contracts.files import CONTRACT_FILES
from gateway.contracts.routing import build_route_table
from tests.conftest import DEFINITIONS
from tests.support.waits import hang_guard

ROUTES = build_route_table(CONTRACT_FILES, [])


def broker() -> MemoryBroker:
    return MemoryBroker(Definitions.load(DEFINITIONS))


class Recorder:
    """A transport's listener that takes its time, as grpc's health servicer does."""

    def __init__(self) -> None:
        self.delivered: list[bool] = []
        self.running = 0
        self.most_running = 0
        self.changed = asyncio.Event()

    async def __call__(self, serving: bool) -> None:
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        for _ in range(3):  # several services, one await each
            await asyncio.sleep(0)
        self.running -= 1
        self.delivered.append(serving)
        self.changed.set()

    async def until(self, serving: bool) -> None:
        async with hang_guard(f"the listener was told serving={serving}"):
            while not (self.delivered and self.delivered[-1] is serving):
                self.changed.clear()
                await self.changed.wait()


async def test_a_quick_flip_ends_in_the_last_state_with_no_overlap() -> None:
    """Down/up/down/up flips reach the listener one at a time, the last state last."""
    memory = broker()
    health = Health(memory, ROUTES)
    listener = Recorder()
    health.watch(listener)
    health.start()
    await memory.start()
    await listener.until(True)
    for connected in (False, True, False, True, False, True):
        memory._set_connected(connected)
        await asyncio.sleep(0)  # a flip while the listener is part-way through the last one
    await listener.until(True)
    await health.stop()

    assert listener.delivered[-1] is True
    assert listener.most_running == 1


async def test_serving_waits_for_every_worker() -> None:
    """With one of two workers disconnected the gateway is not serving, and readiness says which."""
    states = WorkerStates(2)
    memory = broker()
    health = Health(memory, ROUTES, workers=states, worker_index=0)
    listener = Recorder()
    health.watch(listener)
    health.start()
    try:
        await memory.start()

        assert not health.serving
        assert await health.readiness() == "worker 2 of 2 not connected to the broker yet"
        states.set(1, True)  # the other worker connects
        await listener.until(True)
        assert health.serving
        assert await health.readiness() is None
        states.set(1, False)
        await listener.until(False)
    finally:
        await health.stop()


def test_worker_states_are_shared_with_a_forked_worker() -> None:
    """What a forked worker writes is what the first one reads."""
    import os

    states = WorkerStates(3)
    pid = os.fork()
    if pid == 0:
        states.set(2, True)
        os._exit(0)
    os.waitpid(pid, 0)

    assert states.disconnected() == [1, 2]
