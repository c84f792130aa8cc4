"""gateway.window.PublishWindow: many tasks of one call, settled as their confirms arrive."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import structlog

from gateway.broker.memory import MemoryBroker
from gateway.core.ingest import Accepted, Ingestor, TaskRequest
from gateway.core.window import Outcome, PublishWindow
from gateway.errors import Code, GatewayError
from tests.unit.test_ingest import GENERATE, GatedBroker, call, definitions, ingestor

TASK = TaskRequest("alice", "images.generate", GENERATE)


@pytest.fixture
async def broker() -> MemoryBroker:
    memory = MemoryBroker(definitions())
    await memory.start()
    return memory


def window(ingest: Ingestor, *, size: int = 10, remaining: float | None = None) -> PublishWindow:
    return PublishWindow(ingest, call(remaining), size=size)


async def test_outcomes_come_by_index_and_a_bad_entry_fails_alone(broker: MemoryBroker) -> None:
    """Confirmed tasks get their task key, an entry that is an error keeps it, by index."""
    publishing = window(ingestor(broker))
    bad = GatewayError(Code.INVALID_ARGUMENT, "set publish or typed")

    publishing.add(0, TASK)
    publishing.add(1, bad)
    publishing.add(2, TaskRequest("", "images.generate", GENERATE))
    publishing.finish()
    outcomes = dict([o async for o in _taken(publishing)])

    assert isinstance(outcomes[0], Accepted)
    assert outcomes[1] is bad
    assert isinstance(outcomes[2], GatewayError)
    assert outcomes[2].code is Code.INVALID_ARGUMENT
    (message,) = broker.messages("images.queue")
    assert message.message_id == outcomes[0].task_id


async def test_a_task_past_the_deadline_expires_and_its_publish_completes(
    broker: MemoryBroker,
) -> None:
    """Without a confirm by the call's deadline a task is DEADLINE_EXCEEDED; it still lands."""
    gated = GatedBroker(broker)
    ingest = ingestor(gated)
    publishing = window(ingest, remaining=0.05)

    publishing.add(0, TASK)
    publishing.finish()
    ((index, outcome),) = await asyncio.wait_for(publishing.take(), 5)

    assert index == 0
    assert isinstance(outcome, GatewayError)
    assert outcome.code is Code.DEADLINE_EXCEEDED
    assert "outcome is unknown" in outcome.message
    assert await publishing.take() == []
    gated.release.set()
    assert await ingest.drain(timeout=5) == 0
    assert len(broker.messages("images.queue")) == 1


async def test_untaken_outcomes_count_against_the_window(broker: MemoryBroker) -> None:
    """A window of 2 with two confirmed but untaken outcomes is full until they are taken."""
    ingest = ingestor(broker)
    publishing = window(ingest, size=2)
    publishing.add(0, TASK)
    publishing.add(1, TASK)
    room = asyncio.create_task(publishing.room())
    # Both confirms arrive (their outcomes are recorded by callbacks the window added first).
    assert await ingest.drain(timeout=5) == 0

    assert publishing.full
    assert not room.done(), "confirms alone make no room while nobody took the outcomes"
    assert len(publishing.take_nowait()) == 2
    await asyncio.wait_for(room, 1)


async def test_closing_logs_pending_tasks_as_cancelled(broker: MemoryBroker) -> None:
    """When the caller goes away, tasks without a confirm are logged CANCELLED, once."""
    gated = GatedBroker(broker)
    ingest = ingestor(gated)
    publishing = window(ingest)

    with structlog.testing.capture_logs() as logs:
        publishing.add(0, TASK)
        await gated.started.wait()
        publishing.close()
        gated.release.set()
        assert await ingest.drain(timeout=5) == 0
        await asyncio.sleep(0)

    outcomes = [e["code"] for e in logs if e["event"].startswith("task ")]
    assert outcomes == ["CANCELLED"]
    assert publishing.take_nowait() == []
    assert len(broker.messages("images.queue")) == 1, "the publish itself went on"


async def _taken(publishing: PublishWindow) -> AsyncIterator[Outcome]:
    while settled := await publishing.take():
        for outcome in settled:
            yield outcome
