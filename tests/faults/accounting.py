"""What reached the queues against what the clients were told.

Every message's `message_id` is its task id, and every request's task id is known up front
(its idempotency key is unique), so each message is matched to the one request that could have
produced it, whatever that request's answer was:

- lost: the client was told OK and no message exists (the guarantee broken);
- phantom: a message exists for a request that got a definite error, one that says nothing was
  published, i.e. anything but an unknown-outcome answer (DEADLINE_EXCEEDED, UNAVAILABLE,
  CANCELLED; HTTP 503, 504, 499; a dropped connection; an abandoned call);
- duplicates: a task id found more than once (the driver never retries, so the gateway sent a
  task twice).
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import aio_pika

from tests.faults.load import Answer

__all__ = ["UNKNOWN_OUTCOME", "Drained", "Report", "account", "drain"]

QUEUES = ("images.queue", "videos.queue")

UNKNOWN_OUTCOME = frozenset(
    {
        "DEADLINE_EXCEEDED",
        "UNAVAILABLE",
        "CANCELLED",
        "HTTP_503",
        "HTTP_504",
        "HTTP_499",
        "HTTP_DISCONNECTED",
        "HANG",
    }
)


@dataclass(frozen=True)
class Drained:
    """One message taken off a queue."""

    queue: str
    message_id: str
    body_task_id: str
    task_key: str


async def drain(url: str, queues: Iterable[str] = QUEUES, timeout: float = 30.0) -> list[Drained]:
    """Consume everything the queues hold right now (nothing publishes any more)."""
    drained: list[Drained] = []
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=1000)
        for name in queues:
            queue = await channel.declare_queue(name, passive=True)
            expected = queue.declaration_result.message_count or 0
            if not expected:
                continue
            async with asyncio.timeout(timeout), queue.iterator(no_ack=True) as messages:
                async for message in messages:
                    body = json.loads(message.body)
                    drained.append(
                        Drained(
                            name,
                            message.message_id or "",
                            body.get("task_id", ""),
                            str((message.headers or {}).get("task_key", "")),
                        )
                    )
                    expected -= 1
                    if not expected:
                        break
    finally:
        await connection.close()
    return drained


@dataclass
class Report:
    """The accounting of one scenario."""

    scenario: str
    sent: int
    ok: int
    errors: dict[str, int]
    found: int
    lost: list[Answer]
    phantom: list[tuple[Answer, int]]
    duplicates: dict[str, int]
    # Messages matching no request of the run; and malformed ones (ids or task_key disagree).
    strangers: list[Drained]
    mismatched: list[str]
    found_by_code: dict[str, int]
    hangs: list[Answer]
    max_latency: float
    found_ids: set[str] = field(default_factory=set)
    # Requests answered with an error whose message is in a queue all the same.
    found_not_ok: list[Answer] = field(default_factory=list)
    wall_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        errors = ", ".join(f"{code} {n}" for code, n in sorted(self.errors.items())) or "none"
        found = ", ".join(f"{code} {n}" for code, n in sorted(self.found_by_code.items()))
        return (
            f"{self.scenario}: sent {self.sent}, ok {self.ok}, errors [{errors}], "
            f"found {self.found} [{found}], lost {len(self.lost)}, "
            f"phantom {len(self.phantom)}, duplicates {len(self.duplicates)}, "
            f"strangers {len(self.strangers)}, hangs {len(self.hangs)}, "
            f"max latency {self.max_latency:.3f}s, wall {self.wall_seconds:.1f}s"
            + "".join(f"; {note}" for note in self.notes)
            + "".join(
                f"; stored despite {code}: {detail!r}"
                for code, detail in sorted({(a.code, a.detail) for a in self.found_not_ok})
            )
        )


def account(
    scenario: str, answers: Sequence[Answer], drained: Sequence[Drained], *, hang_after: float
) -> Report:
    """Match drained messages to answers by task id; `hang_after`: deadline plus margin."""
    by_task = {answer.task_id: answer for answer in answers}
    assert len(by_task) == len(answers), "two requests share a task id: keys are not unique"
    copies = Counter(message.message_id for message in drained)
    mismatched = [
        m.message_id
        for m in drained
        if m.message_id != m.body_task_id
        or (m.message_id in by_task and not m.task_key.endswith(":" + m.message_id))
    ]
    mismatched += [
        f"answer {a.task_key!r} for task {a.task_id}"
        for a in answers
        if a.ok and not a.task_key.endswith(":" + a.task_id)
    ]
    found_by_code: Counter[str] = Counter()
    phantom = []
    for task_id, n in copies.items():
        answer = by_task.get(task_id)
        if answer is None:
            continue
        found_by_code[answer.code] += 1
        if not answer.ok and answer.code not in UNKNOWN_OUTCOME:
            phantom.append((answer, n))
    errors = Counter(a.code for a in answers if not a.ok)
    return Report(
        scenario=scenario,
        sent=len(answers),
        ok=sum(a.ok for a in answers),
        errors=dict(errors),
        found=sum(found_by_code.values()),
        lost=[a for a in answers if a.ok and a.task_id not in copies],
        phantom=phantom,
        duplicates={task_id: n for task_id, n in copies.items() if n > 1},
        strangers=[m for m in drained if m.message_id not in by_task],
        mismatched=mismatched,
        found_by_code=dict(found_by_code),
        hangs=[a for a in answers if a.code == "HANG" or a.latency > hang_after],
        max_latency=max((a.latency for a in answers), default=0.0),
        found_ids=set(copies),
        found_not_ok=[a for a in answers if not a.ok and a.task_id in copies],
    )
