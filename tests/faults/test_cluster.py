"""Failover across a 3-node RabbitMQ cluster: a node lost at a time loses nothing.

A cluster of three private nodes (tests/support/rabbit_cluster.py) with the production
topology: quorum queues replicated on every node, dead-lettering, the policies, and the
gateway's least-privilege user. Two gateway processes (`python -m gateway`, one worker each)
are given all three addresses and driven by the fault suite's load driver. Then, one fault at a
time (quorum queues need a majority, so never two nodes down), on the node holding the
gateways' connections: it is stopped and started again; the node they moved to is killed
(SIGKILL) and started again; the node they moved to next is frozen (SIGSTOP) for longer than
the heartbeat timeout, the only way a client notices a peer that keeps its sockets open, and
thawed (SIGCONT). Every answer is accounted for against what the queues hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import unavailable
from tests.faults.accounting import account, drain
from tests.faults.conftest import BOOT_SECONDS, SCENARIO_REPORTS
from tests.faults.load import NOT_SERVING, SERVING, Answer, HealthWatch, Kind, LoadDriver
from tests.faults.test_faults import assert_accounted
from tests.support.gateway_process import GatewayProcess
from tests.support.rabbit_cluster import RabbitCluster
from tests.support.rabbit_node import find_scripts

pytestmark = pytest.mark.rabbitmq

DEADLINE = 2.0
MARGIN = 0.5
HEARTBEAT = 2
# aiormq gives up on a peer after three heartbeat intervals (plus one second each) of silence.
FROZEN_NOTICED_AFTER = 3 * (HEARTBEAT + 1)
CLIENTS = 6  # per gateway: enough for a steady flow, little enough for two cores
WARM_UP_OK = 100
# What a client may hear while a node is lost: the broker is away or the outcome is unknown.
DURING_A_LOSS = frozenset({"UNAVAILABLE", "HTTP_503", "DEADLINE_EXCEEDED", "HTTP_504"})
CONNECTION_NAME = "task-gateway "  # the gateway's connections: "task-gateway control", …
GATEWAY_SETTINGS = {
    "TASK_GATEWAY__WORKERS": "1",
    "TASK_GATEWAY__BROKER__HEARTBEAT_SECONDS": str(HEARTBEAT),
    "TASK_GATEWAY__BROKER__CONNECT_TIMEOUT_SECONDS": "2",
    "TASK_GATEWAY__BROKER__RECONNECT_MAX_BACKOFF_SECONDS": "0.5",
    # Past the heartbeat timeout, for the requests with a long deadline sent to a frozen node.
    "TASK_GATEWAY__BROKER__PUBLISH_TIMEOUT_SECONDS": "20",
}
PATIENT_DEADLINE = 15.0
TASK_TYPES = ("images.generate", "videos.generate")


@pytest.fixture
async def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[RabbitCluster]:
    """A running 3-node cluster with the production topology, stopped afterwards."""
    if find_scripts() is None:
        unavailable("the cluster failover test", "rabbitmq-server or rabbitmqctl is not on PATH")
    running = RabbitCluster(tmp_path / "cluster")
    try:
        await running.start()
        yield running
    finally:
        try:
            await running.close()
        finally:
            for seconds in running.boot_seconds:
                BOOT_SECONDS.append((request.node.name, seconds))


@dataclass
class Side:
    """One gateway process, its health watch and its clients."""

    name: str
    process: GatewayProcess
    health: HealthWatch
    load: LoadDriver


@dataclass
class Fault:
    """What one node loss did, as each gateway's clients saw it."""

    how: str
    node: str
    at: float
    down_at: float  # the node stopped, was killed or frozen
    back_at: float = 0.0  # started again, or thawed
    notes: str = ""


async def test_a_node_lost_at_a_time_loses_no_task(cluster: RabbitCluster, tmp_path: Path) -> None:
    """Two gateways given all three addresses lose no OK and publish no refused task while the
    node holding their connections is stopped, killed, or frozen past the heartbeat timeout;
    every answer comes within the deadline, and both answer OK again soon after each loss,
    without a restart."""
    addresses = ",".join(cluster.gateway_urls)
    processes = [
        GatewayProcess(addresses, tmp_path, name=f"gateway-{i}", settings=GATEWAY_SETTINGS)
        for i in (1, 2)
    ]
    started = time.monotonic()
    faults: list[Fault] = []
    probes: list[Answer] = []
    try:
        await asyncio.gather(*(process.start() for process in processes))
        async with contextlib.AsyncExitStack() as stack:
            sides = []
            for process in processes:
                health = await stack.enter_async_context(HealthWatch(process.addresses.grpc))
                load = await stack.enter_async_context(
                    LoadDriver(
                        process.addresses.grpc,
                        process.addresses.http_port,
                        run=f"cluster-{process.name}",
                        clients=CLIENTS,
                        deadline=DEADLINE,
                        margin=MARGIN,
                        max_requests=60000,
                        max_seconds=300,
                    )
                )
                sides.append(Side(process.name, process, health, load))
            for side in sides:
                side.load.start()
            for side in sides:
                await side.load.wait_until(
                    side.load.reached(WARM_UP_OK, ["OK"]), 30, f"{side.name}: OK before the faults"
                )
            for how in ("stopped", "killed", "frozen"):
                faults.append(await lose_a_node(cluster, sides, how, probes))
            for side in sides:
                await side.load.stop()
            answers = [answer for side in sides for answer in side.load.answers]
            health_notes = [
                f"{side.name} health: {' '.join(side.health.names())}" for side in sides
            ]
        assert all(process.alive for process in processes), "a gateway process died"
    finally:
        await asyncio.gather(*(process.stop() for process in processes))

    report = account(
        "3-node cluster failover",
        answers + probes,
        await drain(cluster.running().url),
        hang_after=DEADLINE + MARGIN,
    )
    # The long-deadline requests are bounded by their own deadline (checked below).
    report.hangs = [a for a in report.hangs if a not in probes]
    report.wall_seconds = time.monotonic() - started
    report.notes += [fault.notes for fault in faults]
    report.notes += [
        f"frozen, deadline {PATIENT_DEADLINE:g}s: "
        + ", ".join(f"{a.code} after {a.latency:.1f}s" for a in probes)
    ]
    report.notes += health_notes
    SCENARIO_REPORTS.append(report)
    assert_accounted(report)
    codes = {a.code for a in answers if not a.ok}
    assert codes <= DURING_A_LOSS, f"unexpected answers: {codes - DURING_A_LOSS}"
    # A publish in flight on the frozen node outlives a short deadline; one with a long
    # deadline hears, once the heartbeat gave up, that its outcome is unknown.
    assert probes, "long-deadline requests were sent to the frozen node"
    for probe in probes:
        assert probe.code == "UNAVAILABLE", (probe.code, probe.detail)
        assert "outcome is unknown" in probe.detail, probe.detail
        assert probe.latency < PATIENT_DEADLINE + MARGIN


async def lose_a_node(
    cluster: RabbitCluster, sides: Sequence[Side], how: str, probes: list[Answer]
) -> Fault:
    """Lose the node holding most of the gateways' connections `how`, see both gateways answer
    OK again without it, bring it back, and wait until its queue replicas are online again."""
    by_node = await cluster.connections_by_node(CONNECTION_NAME)
    node, held = by_node.most_common(1)[0]
    marks = [side.health.mark() for side in sides]
    at = time.monotonic()
    if how == "stopped":
        await node.stop()
    elif how == "killed":
        await node.kill()
    else:
        await node.freeze()
    fault = Fault(how, node.node.partition("@")[0], at, time.monotonic())
    frozen_probes = []
    if how == "frozen":
        # Requests with a deadline far beyond the heartbeat timeout, in flight on the frozen node.
        frozen_probes = [
            asyncio.create_task(long_deadline_request(side, PATIENT_DEADLINE)) for side in sides
        ]
    await ok_again(sides, fault.down_at, FROZEN_NOTICED_AFTER + 30, f"with {fault.node} {how}")
    probes.extend(await asyncio.gather(*frozen_probes))
    if how == "frozen":
        await node.thaw()
        await node.wait_ready()
    else:
        await node.start()
    fault.back_at = time.monotonic()
    await cluster.wait_replicated()
    await ok_again(sides, fault.back_at, 30, f"after {fault.node} came back")
    fault.notes = describe(fault, held, sides, marks)
    return fault


async def ok_again(sides: Sequence[Side], since: float, timeout: float, when: str) -> None:
    """Until every gateway answered OK to tasks of every type sent `since` (bounded)."""
    for side in sides:
        for task_type in TASK_TYPES:
            await side.load.wait_until(
                side.load.reached(WARM_UP_OK // 2, ["OK"], since=since, task_type=task_type),
                timeout,
                f"{side.name}: {task_type} OK {when}",
            )


async def long_deadline_request(side: Side, deadline: float) -> Answer:
    """One typed gRPC request to the side's gateway with `deadline`."""
    addresses = side.process.addresses
    async with LoadDriver(
        addresses.grpc, addresses.http_port, run=f"{side.name}-patient", deadline=deadline, margin=5
    ) as patient:
        return await patient.send(Kind("grpc-typed", "images.generate"))


def describe(fault: Fault, held: int, sides: Sequence[Side], marks: Sequence[int]) -> str:
    """Each gateway's view of a fault: its errors, until when, OK again, its health."""
    parts = [f"{fault.how} {fault.node} (held {held} connections)"]
    for side, mark in zip(sides, marks, strict=True):
        during = [
            a for a in side.load.answers if a.finished >= fault.at and a.started < fault.back_at
        ]
        errors = [a for a in during if not a.ok]
        # The last failed request, by when it was sent; the first OK to one sent after it.
        last_error = max((a.started for a in errors), default=fault.at)
        ok_again = min(a.finished for a in during if a.ok and a.started >= last_error)
        statuses = side.health.statuses[mark:]
        down = next((t for t, s in statuses if s == NOT_SERVING), None)
        up = next((t for t, s in statuses if s == SERVING and down is not None and t > down), None)
        health = (
            f"health NOT_SERVING +{down - fault.at:.1f}s, SERVING +{up - fault.at:.1f}s"
            if down is not None and up is not None
            else "health stayed SERVING"
        )
        parts.append(
            f"{side.name}: {codes(errors)}, the last sent +{last_error - fault.at:.1f}s, "
            f"OK again +{ok_again - fault.at:.1f}s, {health}"
        )
    return " | ".join(parts)


def codes(answers: Iterable[Answer]) -> str:
    counts = Counter(a.code for a in answers)
    return ", ".join(f"{code} {n}" for code, n in sorted(counts.items())) or "no errors"
