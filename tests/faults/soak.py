"""Soak: minutes of load on one gateway process while faults hit its RabbitMQ at random moments.

`python -m tests.faults.soak [--minutes 3] [--seed N] [--clients 32]` (`make soak`).

What it does
------------
1. Boots a private RabbitMQ node (`RabbitNode`: own port, cookie and data under build/soak/,
   the deploy definitions) and ONE gateway as a subprocess (`python -m gateway --workers 1`)
   on free 127.0.0.1 ports, its output in build/soak/gateway.log. A subprocess so that its
   memory can be read from /proc (VmHWM, and VmRSS every second) and so that the load and
   the gateway do not share an event loop.
2. Drives it for `--minutes` with the fault suite's `LoadDriver`: `--clients` concurrent
   clients mixing typed gRPC, generic gRPC Publish and legacy REST, every request with a
   unique idempotency key (so the task id of each request is known whatever its answer).
3. Every ~15-30 s (seeded RNG: `--seed` replays the same schedule) injects one fault, holds
   it a few seconds, clears it and waits for recovery (health SERVING and OKs for both task
   types again): broker stop+start, broker kill+start, close_all_connections, memory alarm
   on/off, an exchange deleted and re-created from deploy/rabbitmq/definitions.json, a
   queue length limit (reject-publish) set then cleared. Kinds are drawn from a shuffled bag
   so that a few minutes cover every kind. The last stretch is always fault-free.
4. Checks health is SERVING, stops the load (each client gets its last answer), probes every
   kind once more, stops the gateway (SIGTERM: what is in flight settles), drains both
   queues and matches every message to the request that produced it
   (`tests.faults.accounting`).

Reading the table
-----------------
- sent / OK / errors by code: every answer the clients got. Errors are expected while a
  fault is active: UNAVAILABLE / HTTP_503 (broker away, nack), RESOURCE_EXHAUSTED /
  HTTP_429 (broker blocking publishers), FAILED_PRECONDITION / HTTP_400 (exchange missing),
  DEADLINE_EXCEEDED / HTTP_504 (no confirm in time: outcome unknown).
- messages found: messages drained from the queues that belong to a request of this run,
  by the answer that request got. Found for an unknown-outcome answer is fine.
- lost: OK answers with no message. MUST be 0: an OK means RabbitMQ took the task.
- phantom: messages for requests told a definite "not published" (e.g. FAILED_PRECONDITION,
  RESOURCE_EXHAUSTED). Must be 0.
- duplicates: a task id stored twice (the clients never retry, so the gateway sent it twice).
- hangs: answers later than deadline + margin (or never). Must be 0. "driver loop lag" is
  how late the soak's own event loop ran: a hang during a large lag may be the driver's.
- gateway RSS: VmHWM (peak) and VmRSS at the start, middle and end of the load, plus the
  largest VmRSS of each 30 s of load: a flat series means no growth under churn.
- faults: when each was injected (seconds since the load began); "held": how long it was
  active (a stopped or killed broker: until the restarted node served AMQP again, its boot
  time in the detail); "back": how long after that the gateway served again (health
  SERVING and 20 OK answers per task type to requests sent after the fault was cleared);
  and the answers to requests sent while it was active.

The whole table is also written to build/soak/result.json. Exit status: 0 clean; 1 when
lost, phantom, hangs, strangers (messages of no request) or mismatched ids appear; 2 when
the run could not complete (gateway died, no recovery, hard cap of about twice the
requested time); 130/143 on Ctrl-C/SIGTERM. The node and the gateway are always stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import shutil
import signal
import socket
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from grpc_health.v1 import health_pb2

from tests.faults.accounting import UNKNOWN_OUTCOME, Report, account, drain
from tests.faults.load import SERVING, Answer, HealthWatch, LoadDriver
from tests.support import DEFINITIONS, ROOT, procs
from tests.support.gateway_process import GatewayProcess
from tests.support.rabbit_node import RabbitNode, find_scripts
from tests.support.rabbitmq import topology_at

OUT = ROOT / "build" / "soak"

# The fault suite's client deadline and margin: an answer later than both is a hang.
DEADLINE = 2.0
MARGIN = 0.5
# Quiet load before the first fault, and fault-free load at the end (recovery proven under
# load, not only by the final probe).
WARM_UP_SECONDS = 8.0
FINAL_CLEAN_SECONDS = 20.0
# Time between two fault injections, and the shortest settle after a recovery.
FAULT_GAP_SECONDS = (15.0, 30.0)
MIN_SETTLE_SECONDS = 5.0
# A fault is not started unless this much time is left before the final clean period: a
# broker restart with its recovery takes 10-20 s.
FAULT_BUDGET_SECONDS = 20.0
# Recovered: health SERVING and this many OK answers per task type to requests sent after the
# fault was cleared, within RECOVERY_TIMEOUT.
RECOVERY_OK = 20
RECOVERY_TIMEOUT = 60.0
TASK_TYPES = ("images.generate", "videos.generate")
QUEUE_OF = {"images.generate": "images.queue", "videos.generate": "videos.queue"}
POLICY = "soak-max-length"
RSS_BUCKET_SECONDS = 30.0
# SIGTERM lets the gateway settle what is in flight; SIGKILL after this.
STOP_GRACE_SECONDS = 20.0

FAULT_KINDS = (
    "broker-stop",
    "broker-kill",
    "close-connections",
    "memory-alarm",
    "exchange-delete",
    "queue-limit",
)


class RunAborted(Exception):
    """The soak cannot go on (gateway died, no recovery): exit 2 after cleaning up."""


# --------------------------------------------------------------------------------------------
# The gateway under test, as a process of its own (tests.support.gateway_process)


def gateway_under_test(broker_url: str) -> GatewayProcess:
    """`python -m gateway --workers 1`, its output in build/soak/gateway.log (not started).

    One worker runs in the started process itself (no supervisor parent), so its pid is the
    one whose /proc/<pid>/status shows the gateway's memory.
    """
    return GatewayProcess(
        broker_url,
        OUT,
        args=("--workers", "1"),
        settings={
            "TASK_GATEWAY__BROKER__RECONNECT_MAX_BACKOFF_SECONDS": "0.5",
            "TASK_GATEWAY__BROKER__HEARTBEAT_SECONDS": "5",
        },
    )


def log_levels(log_path: Path) -> tuple[dict[str, int], list[str]]:
    """Lines of the gateway's log by level, errors also by logger (JSON lines; anything
    else, e.g. a traceback on stderr, is "raw"), and the first error lines."""
    levels: Counter[str] = Counter()
    errors: list[str] = []
    with contextlib.suppress(OSError), log_path.open(errors="replace") as log:
        for line in log:
            try:
                event = json.loads(line)
                level = str(event.get("level", "?"))
                if level in ("error", "critical"):
                    level += f" ({event.get('logger', 'gateway')})"
            except (ValueError, AttributeError):
                level = "raw"
            levels[level] += 1
            if not level.startswith(("warning", "info", "debug")) and len(errors) < 20:
                errors.append(line.strip()[:500])
    return dict(levels), errors


# --------------------------------------------------------------------------------------------
# Watching the run: answers, memory, the driver's own event loop


class Answers:
    """Cheap questions about the driver's answers.

    `LoadDriver.count` scans every answer each time; over minutes (hundreds of thousands of
    answers) that is quadratic. Answers are appended as they complete, so an answer to a
    request sent after a moment lies after the index the list had at that moment: these
    helpers scan only from such a mark.
    """

    def __init__(self, load: LoadDriver) -> None:
        self.load = load

    def mark(self) -> int:
        return len(self.load.answers)

    def since(self, mark: int, started: float) -> list[Answer]:
        return [a for a in self.load.answers[mark:] if a.started >= started]

    def ok_rate(self, task_type: str, window: float = 3.0) -> float:
        """OK answers per second for `task_type` over the last `window` seconds."""
        now, n = time.monotonic(), 0
        for answer in reversed(self.load.answers):
            if answer.finished < now - window - DEADLINE - MARGIN:
                break
            if answer.finished >= now - window and answer.ok and answer.kind.task_type == task_type:
                n += 1
        return n / window

    async def wait(
        self, predicate: Callable[[], bool], timeout: float, what: str, poll: float = 0.05
    ) -> float:
        """Poll until `predicate()`; the seconds it took, or RunAborted after `timeout`."""
        started = time.monotonic()
        while not predicate():
            if time.monotonic() - started > timeout:
                raise RunAborted(f"not within {timeout}s: {what}")
            await asyncio.sleep(poll)
        return time.monotonic() - started


class Sampler:
    """VmRSS of the gateway every second, and how late the driver's event loop wakes up."""

    def __init__(self, gateway: GatewayProcess, t0: float) -> None:
        self.gateway = gateway
        self.t0 = t0
        self.rss: list[tuple[float, float]] = []  # (seconds since t0, MB)
        self.max_lag = 0.0
        self.lags: list[tuple[float, float]] = []  # late wake-ups over 0.2 s
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._sample_rss(), name="soak-rss"),
            asyncio.create_task(self._watch_lag(), name="soak-lag"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _sample_rss(self) -> None:
        while True:
            if self.gateway.alive:
                self.rss.append((time.monotonic() - self.t0, procs.rss_mb(self.gateway.pids())))
            await asyncio.sleep(1.0)

    async def _watch_lag(self) -> None:
        # A sleep that returns late means the loop was busy (or the machine starved it); a
        # request answered "late" during such a moment may have been answered on time.
        while True:
            before = time.monotonic()
            await asyncio.sleep(0.1)
            lag = time.monotonic() - before - 0.1
            self.max_lag = max(self.max_lag, lag)
            if lag > 0.2:
                self.lags.append((before - self.t0, lag))


# --------------------------------------------------------------------------------------------
# Faults


@dataclass
class Fault:
    """One injected fault; times in seconds since the load began."""

    kind: str
    at: float
    cleared_at: float = 0.0
    recovered_in: float | None = None
    detail: str = ""
    error: str = ""
    answers_while_active: dict[str, int] = field(default_factory=dict)

    @property
    def held(self) -> float:
        return self.cleared_at - self.at


class Injector:
    """Injects, clears and, whatever happened, undoes the faults on the private node."""

    def __init__(
        self,
        node: RabbitNode,
        answers: Answers,
        health: HealthWatch,
        rng: random.Random,
        t0: float,
    ) -> None:
        self.node = node
        self.answers = answers
        self.health = health
        self.rng = rng
        self.t0 = t0
        self.faults: list[Fault] = []
        self._bag: list[str] = []

    def next_kind(self) -> str:
        # A shuffled bag rather than independent draws: still random, but any six consecutive
        # faults cover every kind, so a three-minute run exercises all of them.
        if not self._bag:
            self._bag = list(FAULT_KINDS)
            self.rng.shuffle(self._bag)
        return self._bag.pop()

    def now(self) -> float:
        return time.monotonic() - self.t0

    async def inject(self, kind: str) -> Fault:
        fault = Fault(kind, self.now())
        self.faults.append(fault)
        mark = self.answers.mark()
        try:
            await getattr(self, "_" + kind.replace("-", "_"))(fault)
        except RunAborted:
            raise
        except Exception as exc:  # the fault tooling failed, not the gateway: undo, go on
            fault.error = f"{type(exc).__name__}: {exc}"
            fault.cleared_at = fault.cleared_at or self.now()
            await self.restore()
        cleared_mono = self.t0 + fault.cleared_at
        fault.answers_while_active = dict(
            Counter(
                a.code
                for a in self.answers.since(mark, self.t0 + fault.at)
                if a.started <= cleared_mono
            )
        )
        fault.recovered_in = await self._wait_recovered(mark, cleared_mono)
        return fault

    async def _wait_recovered(self, mark: int, cleared: float) -> float:
        """Health SERVING and RECOVERY_OK OKs per task type for requests sent after `cleared`."""

        def recovered() -> bool:
            if self.health.latest != SERVING:
                return False
            counts = Counter(a.kind.task_type for a in self.answers.since(mark, cleared) if a.ok)
            return all(counts[t] >= RECOVERY_OK for t in TASK_TYPES)

        await self.answers.wait(
            recovered, RECOVERY_TIMEOUT, "recovery after a fault (health SERVING, OKs)", 0.1
        )
        return time.monotonic() - cleared

    async def _hold(self, low: float, high: float) -> None:
        await asyncio.sleep(self.rng.uniform(low, high))

    # -- the kinds (each sets fault.cleared_at once the fault is undone)

    async def _broker_stop(self, fault: Fault) -> None:
        await self.node.stop()
        await self._hold(1.0, 5.0)
        boot = await self.node.start()
        # Cleared once the node serves again: "back" is then the gateway's own reconnect,
        # not the node's boot (shown in the detail, and counted in "held").
        fault.cleared_at = self.now()
        fault.detail = f"graceful stop, node booted in {boot:.1f}s"

    async def _broker_kill(self, fault: Fault) -> None:
        await self.node.kill()
        await self._hold(1.0, 5.0)
        boot = await self.node.start()
        fault.cleared_at = self.now()
        fault.detail = f"SIGKILL, node booted in {boot:.1f}s"

    async def _close_connections(self, fault: Fault) -> None:
        await self.node.close_all_connections()
        fault.cleared_at = self.now()  # nothing to undo: the gateway must reconnect by itself
        fault.detail = "rabbitmqctl close_all_connections"

    async def _memory_alarm(self, fault: Fault) -> None:
        hold = self.rng.uniform(2.0, 8.0)
        await self.node.set_memory_alarm(True)
        await asyncio.sleep(hold)
        await self.node.set_memory_alarm(False)
        fault.cleared_at = self.now()
        fault.detail = f"watermark 0 for {hold:.1f}s"

    async def _exchange_delete(self, fault: Fault) -> None:
        exchange = self.rng.choice(["images.tasks", "videos.tasks"])
        async with topology_at(self.node.url) as topology:
            await topology.delete_exchange(exchange)
            hold = self.rng.uniform(1.0, 5.0)
            await asyncio.sleep(hold)
            await topology.declare_exchange(exchange)
        fault.cleared_at = self.now()
        fault.detail = f"{exchange} deleted for {hold:.1f}s, re-declared from definitions.json"

    async def _queue_limit(self, fault: Fault) -> None:
        task_type = self.rng.choice(TASK_TYPES)
        queue = QUEUE_OF[task_type]
        # RabbitMQ applies a new max-length to the messages already queued, dropping the
        # oldest (checked on 3.10 with reject-publish too), which would read as lost OKs. So
        # the limit is the current depth plus a few seconds of this queue's publish rate:
        # enough that the depth cannot pass it while rabbitmqctl applies the policy (well
        # under a second), small enough that the queue fills and nacks within seconds.
        rate = self.answers.ok_rate(task_type)
        depth = (await self.depths())[queue]
        slack = max(200, round(rate * 4))
        limit = depth + slack
        read_at = time.monotonic()
        mark = self.answers.mark()
        await self.node.limit_queue(POLICY, queue, limit)
        applied_in = time.monotonic() - read_at
        # Held until the full queue has nacked a few requests (or 20 s), then a little more.
        try:
            await self.answers.wait(
                lambda: (
                    sum(
                        1
                        for a in self.answers.since(mark, read_at)
                        if a.kind.task_type == task_type and "nacked" in a.detail
                    )
                    >= 20
                ),
                20.0,
                f"nacks from the full {queue}",
                0.1,
            )
            nacked_after = f"first nacks after {time.monotonic() - read_at:.1f}s"
        except RunAborted:
            nacked_after = "no nacks within 20s"
        await self._hold(1.0, 3.0)
        await self.node.clear_queue_limit(POLICY, queue)
        fault.cleared_at = self.now()
        fault.detail = (
            f"{queue} max-length {limit} (depth {depth} + {slack}, at {rate:.0f} OK/s), "
            f"applied in {applied_in:.2f}s, {nacked_after}"
        )

    # -- helpers

    async def depths(self) -> dict[str, int]:
        async with topology_at(self.node.url) as topology:
            return await topology.counts()

    async def restore(self) -> list[str]:
        """Undo every kind of fault, whatever is active (idempotent); what it had to undo."""
        undone: list[str] = []
        if not self.node.running:
            await self.node.start()
            undone.append("node started")
        await self.node.set_memory_alarm(False)
        policies = await self.node.ctl("list_policies", "-p", "/", "--no-table-headers")
        if POLICY in policies:
            await self.node.ctl("clear_policy", "-p", "/", POLICY)
            undone.append("queue limit cleared")
        present = (
            await self.node.ctl("list_exchanges", "-p", "/", "name", "--no-table-headers")
        ).split()
        async with topology_at(self.node.url) as topology:
            for spec in topology.definitions["exchanges"]:
                await topology.declare_exchange(spec["name"])  # bindings too, in case one was lost
                if spec["name"] not in present:
                    undone.append(f"{spec['name']} re-declared")
        return undone


# --------------------------------------------------------------------------------------------
# The run


@dataclass
class Result:
    """Everything the table and result.json show."""

    minutes: float
    seed: int
    clients: int
    load_seconds: float = 0.0
    wall_seconds: float = 0.0
    faults: list[Fault] = field(default_factory=list)
    report: Report | None = None
    rss: list[tuple[float, float]] = field(default_factory=list)
    peak_rss_mb: float | None = None
    max_loop_lag: float = 0.0
    loop_lags: list[tuple[float, float]] = field(default_factory=list)
    node_boots: list[float] = field(default_factory=list)
    health: list[tuple[float, str]] = field(default_factory=list)
    probe: dict[str, int] = field(default_factory=dict)
    gateway_exit: int | None = None
    gateway_log_levels: dict[str, int] = field(default_factory=dict)
    gateway_log_errors: list[str] = field(default_factory=list)
    restored_at_end: list[str] = field(default_factory=list)
    depths_before_drain: dict[str, int] = field(default_factory=dict)
    aborted: str = ""
    failures: list[str] = field(default_factory=list)
    t0: float = 0.0


async def run(args: argparse.Namespace, result: Result) -> None:
    """Boot, load, inject, recover, account; fills `result` as it goes."""
    started = time.monotonic()
    duration = args.minutes * 60
    cap = max(2 * duration, duration + 120.0)  # boots and the drain need time of their own
    OUT.mkdir(parents=True, exist_ok=True)
    base = OUT / "rabbitmq"
    shutil.rmtree(base, ignore_errors=True)  # a previous run's node data
    node = RabbitNode(base, DEFINITIONS)
    gateway = gateway_under_test(node.url)
    rng = random.Random(args.seed)
    try:
        async with asyncio.timeout(cap) as limit:
            try:
                await _run(args, result, node, gateway, rng, duration, limit)
            except TimeoutError:
                if not limit.expired():
                    raise
                result.aborted = f"hard cap of {cap:.0f}s reached"
    finally:
        # Bounded, and on every path (Ctrl-C included): no gateway or node outlives the run.
        with contextlib.suppress(Exception):
            result.gateway_exit = await gateway.stop(grace=STOP_GRACE_SECONDS)
        result.gateway_log_levels, result.gateway_log_errors = log_levels(OUT / "gateway.log")
        try:
            await node.close()
        finally:
            result.node_boots = list(node.boot_seconds)
            result.wall_seconds = time.monotonic() - started
            # The node's message store can be hundreds of MB; its logs stay for a post-mortem.
            shutil.rmtree(base / "mnesia", ignore_errors=True)


async def _run(
    args: argparse.Namespace,
    result: Result,
    node: RabbitNode,
    gateway: GatewayProcess,
    rng: random.Random,
    duration: float,
    limit: asyncio.Timeout,
) -> None:
    print(f"booting a private RabbitMQ node under {node.base} ...", flush=True)
    await node.start()
    try:
        await gateway.start()
    except RuntimeError as exc:
        raise RunAborted(str(exc)) from None
    print(
        f"gateway pid {gateway.pids()[0]} serving on "
        f"{gateway.addresses.grpc} (REST {gateway.addresses.http}); "
        f"{args.minutes:g} min of load, seed {args.seed}, {args.clients} clients",
        flush=True,
    )
    load = LoadDriver(
        gateway.addresses.grpc,
        gateway.addresses.http_port,
        run=f"soak-{args.seed}-{int(time.time())}",
        clients=args.clients,
        deadline=DEADLINE,
        margin=MARGIN,
        max_requests=50_000_000,  # bounded by time, not by count
        max_seconds=duration + 60.0,  # stopped explicitly; this only bounds a runaway
    )
    health = HealthWatch(gateway.addresses.grpc)
    async with health, load:
        t0 = time.monotonic()
        result.t0 = t0
        answers = Answers(load)
        sampler = Sampler(gateway, t0)
        injector = Injector(node, answers, health, rng, t0)
        # Shared lists: an interrupted run still reports what was seen until then.
        result.faults, result.rss, result.loop_lags = injector.faults, sampler.rss, sampler.lags
        sampler.start()
        load.start()
        try:
            await answers.wait(
                lambda: sum(a.ok for a in load.answers[:2000]) >= 100, 30, "100 OK at warm-up"
            )
            await _inject_faults(injector, gateway, rng, t0, duration)
            # Clean: whatever a failed fault left behind is undone, then fault-free load.
            result.restored_at_end = await injector.restore()
            end = t0 + duration
            while time.monotonic() < end:
                _check_alive(gateway)
                await asyncio.sleep(min(1.0, max(0.0, end - time.monotonic())))
            await answers.wait(lambda: health.latest == SERVING, 30, "health SERVING at the end")
        finally:
            # Every client waits for its last answer (bounded by deadline + margin).
            await load.stop()
            result.load_seconds = time.monotonic() - t0
            peak_rss_mb = procs.peak_rss_mb(gateway.pids()) if gateway.alive else None
            await sampler.stop()
            result.peak_rss_mb = peak_rss_mb
            result.max_loop_lag = sampler.max_lag
            result.health = [
                (at - t0, health_pb2.HealthCheckResponse.ServingStatus.Name(status))
                for at, status in health.statuses
            ]
        # Fresh requests of every kind: served again, after all the faults, by the same process.
        probe = await load.probe(rounds=1)
        result.probe = dict(Counter(a.code for a in probe))
    # Stopped before draining: publishes still in flight (shielded, finishing in the
    # background after a deadline) settle during its graceful shutdown, and nothing can
    # land in the queues after the drain began.
    result.gateway_exit = await gateway.stop(grace=STOP_GRACE_SECONDS)
    result.depths_before_drain = await injector.depths()
    # Whatever the hard cap leaves: a long soak queues hundreds of thousands of messages.
    cap_at = limit.when()
    remaining = 300.0 if cap_at is None else cap_at - asyncio.get_running_loop().time()
    print(f"draining {sum(result.depths_before_drain.values())} messages ...", flush=True)
    drained = await drain(node.url, timeout=max(10.0, remaining - 5))
    result.report = account("soak", load.answers, drained, hang_after=DEADLINE + MARGIN)


async def _inject_faults(
    injector: Injector, gateway: GatewayProcess, rng: random.Random, t0: float, duration: float
) -> None:
    """Faults at random moments until the final clean period; each cleared and recovered."""
    last_fault = 0.0
    next_at = WARM_UP_SECONDS + rng.uniform(0.0, FAULT_GAP_SECONDS[0] - WARM_UP_SECONDS)
    last_start_allowed = duration - FINAL_CLEAN_SECONDS - FAULT_BUDGET_SECONDS
    while True:
        if next_at > last_start_allowed:
            return
        while time.monotonic() - t0 < next_at:
            _check_alive(gateway)
            await asyncio.sleep(min(0.5, next_at - (time.monotonic() - t0)))
        kind = injector.next_kind()
        print(f"  {time.monotonic() - t0:6.1f}s  {kind} ...", end="", flush=True)
        fault = await injector.inject(kind)
        _check_alive(gateway)
        print(
            f" held {fault.held:.1f}s, recovered {fault.recovered_in or 0:.1f}s after clearing"
            + (f" [fault tooling error: {fault.error}]" if fault.error else ""),
            flush=True,
        )
        last_fault = fault.at
        done = time.monotonic() - t0
        next_at = max(last_fault + rng.uniform(*FAULT_GAP_SECONDS), done + MIN_SETTLE_SECONDS)


def _check_alive(gateway: GatewayProcess) -> None:
    if not gateway.alive:
        status = gateway.child.process.returncode if gateway.child else "?"
        raise RunAborted(f"the gateway exited ({status}) mid-run:\n{gateway.log_tail()}")


# --------------------------------------------------------------------------------------------
# The verdict and the table


def judge(result: Result) -> None:
    report = result.report
    if result.aborted:
        result.failures.append(f"aborted: {result.aborted}")
    if report is None:
        return
    if report.lost:
        result.failures.append(f"{len(report.lost)} OK answers have no message (lost)")
    if report.phantom:
        result.failures.append(f"{len(report.phantom)} messages for definite errors (phantom)")
    if report.hangs:
        result.failures.append(f"{len(report.hangs)} answers later than {DEADLINE + MARGIN}s")
    if report.strangers:
        result.failures.append(f"{len(report.strangers)} messages of no request (strangers)")
    if report.mismatched:
        result.failures.append(f"{len(report.mismatched)} messages with mismatched ids")
    if set(result.probe) - {"OK"}:
        result.failures.append(f"final probe not all OK: {result.probe}")


def _codes(counts: dict[str, int]) -> str:
    return ", ".join(f"{code} {n}" for code, n in sorted(counts.items(), key=lambda i: -i[1]))


def _rss_at(rss: Sequence[tuple[float, float]], at: float) -> float | None:
    return min(rss, key=lambda s: abs(s[0] - at))[1] if rss else None


def _rss_buckets(rss: Iterable[tuple[float, float]], load_seconds: float) -> list[float]:
    buckets: dict[int, float] = {}
    for at, mb in rss:
        if 0 <= at <= load_seconds:
            index = int(at // RSS_BUCKET_SECONDS)
            buckets[index] = max(buckets.get(index, 0.0), mb)
    return [buckets[i] for i in sorted(buckets)]


def _explain(answer: Answer, faults: Sequence[Fault], t0: float) -> str:
    """An answer with the fault nearest to when it was sent."""
    at = answer.started - t0
    near = min(faults, key=lambda f: abs(f.at - at), default=None)
    where = f", {at - near.at:+.2f}s from {near.kind} at {near.at:.1f}s" if near else ""
    return (
        f"{answer.kind.transport} {answer.kind.task_type} task {answer.task_id} sent at "
        f"{at:.2f}s, {answer.code} after {answer.latency:.3f}s{where}"
        + (f": {answer.detail[:160]}" if answer.detail else "")
    )


def _mb(value: float | None) -> str:
    return "?" if value is None else f"{value:.1f}"


def _rss_points(result: Result) -> dict[str, float | None]:
    """VmRSS at the start, middle and end of the load."""
    return {
        "start": next((mb for at, mb in result.rss if at >= 0), None),
        "middle": _rss_at(result.rss, result.load_seconds / 2),
        "end": _rss_at(result.rss, result.load_seconds),
    }


def _run_rows(result: Result) -> list[tuple[str, str]]:
    """How long, with what, and which faults when."""
    kinds = Counter(f.kind for f in result.faults)
    rows = [
        (
            "duration",
            f"{result.load_seconds:.1f}s of load ({result.minutes:g} min asked), "
            f"wall {result.wall_seconds:.1f}s; seed {result.seed}, {result.clients} clients, "
            f"deadline {DEADLINE}s + {MARGIN}s margin",
        ),
        (
            "faults injected",
            f"{len(result.faults)}: "
            + (", ".join(f"{k} {n}" for k, n in sorted(kinds.items())) or "none"),
        ),
    ]
    for kind in sorted(kinds):
        at = ", ".join(f"{f.at:.1f}s" for f in result.faults if f.kind == kind)
        rows.append((f"  {kind} at", at))
    return rows


def _accounting_rows(report: Report | None) -> list[tuple[str, str]]:
    """What the clients were told against what reached the queues."""
    if report is None:
        return [("accounting", "not done (the run did not complete)")]
    found = _codes(report.found_by_code)
    unknown = sum(n for code, n in report.found_by_code.items() if code in UNKNOWN_OUTCOME)
    return [
        ("sent", str(report.sent)),
        ("OK", str(report.ok)),
        ("errors by code", _codes(report.errors) or "none"),
        ("messages found", f"{report.found} ({found}; {unknown} for unknown-outcome answers)"),
        ("lost (must be 0)", str(len(report.lost))),
        ("phantom (must be 0)", str(len(report.phantom))),
        ("duplicates", str(len(report.duplicates))),
        ("strangers / mismatched", f"{len(report.strangers)} / {len(report.mismatched)}"),
        (
            "hangs (must be 0)",
            f"{len(report.hangs)} (> {DEADLINE + MARGIN}s); max latency {report.max_latency:.3f}s",
        ),
    ]


def _gateway_rows(result: Result, rss: dict[str, float | None]) -> list[tuple[str, str]]:
    """The gateway's memory, recoveries and exit, the driver's own lag, and the verdict."""
    recoveries = sorted(f.recovered_in for f in result.faults if f.recovered_in is not None)
    buckets = _rss_buckets(result.rss, result.load_seconds)
    return [
        (
            "gateway peak RSS (MB)",
            f"{_mb(result.peak_rss_mb)} (VmHWM); VmRSS start {_mb(rss['start'])}, "
            f"middle {_mb(rss['middle'])}, end {_mb(rss['end'])}",
        ),
        (
            f"VmRSS max per {RSS_BUCKET_SECONDS:.0f}s",
            " ".join(f"{v:.1f}" for v in buckets) or "?",
        ),
        (
            "recovery after clearing",
            f"median {recoveries[len(recoveries) // 2]:.1f}s, max {recoveries[-1]:.1f}s"
            if recoveries
            else "n/a",
        ),
        ("node boots (s)", " ".join(f"{s:.1f}" for s in result.node_boots)),
        (
            "driver loop lag",
            f"max {result.max_loop_lag:.3f}s, {len(result.loop_lags)} wake-ups > 0.2s late",
        ),
        ("final probe", _codes(result.probe) or "not run"),
        (
            "gateway",
            f"exit {result.gateway_exit}, log lines "
            + (_codes(result.gateway_log_levels) or "none")
            + f" ({OUT.relative_to(ROOT) / 'gateway.log'})",
        ),
        ("verdict", "PASS" if not result.failures else "FAIL: " + "; ".join(result.failures)),
    ]


def _fault_lines(result: Result) -> list[str]:
    """One line per fault: when, what, how long held, how soon back, the answers meanwhile."""
    lines = [
        "faults (seconds since the load began):",
        f"  {'#':>2}  {'at':>6}  {'kind':<18} {'held':>5}  {'back':>5}  "
        "answers while active; detail",
    ]
    for i, f in enumerate(result.faults, 1):
        back = f"{f.recovered_in:5.1f}" if f.recovered_in is not None else "   --"
        lines.append(
            f"  {i:>2}  {f.at:6.1f}  {f.kind:<18} {f.held:5.1f}  {back}  "
            f"{_codes(f.answers_while_active) or '-'}; {f.detail}"
            + (f" [tooling error: {f.error}]" if f.error else "")
        )
    return lines


def _evidence(result: Result) -> dict[str, list[str]]:
    """The first few answers or messages behind each non-zero count, each with its fault."""
    report, t0 = result.report, result.t0
    if report is None:
        return {}
    return {
        "lost": [_explain(a, result.faults, t0) for a in report.lost[:20]],
        "phantom": [
            f"{_explain(a, result.faults, t0)} (stored {n}x)" for a, n in report.phantom[:20]
        ],
        "hangs": [_explain(a, result.faults, t0) for a in report.hangs[:20]],
        "duplicates": [f"{task} x{n}" for task, n in list(report.duplicates.items())[:20]],
        "strangers": [str(m) for m in report.strangers[:20]],
        "mismatched": report.mismatched[:20],
    }


def _text(result: Result, rows: list[tuple[str, str]], evidence: dict[str, list[str]]) -> str:
    width = max(len(k) for k, _ in rows)
    lines = ["", "soak result", "-" * (width + 60)]
    lines += [f"{k.ljust(width)}  {v}" for k, v in rows]
    lines += ["-" * (width + 60), *_fault_lines(result)]
    for name, items in evidence.items():
        if items:
            lines.append(f"{name} (first {len(items)}):")
            lines += [f"  {item}" for item in items]
    if result.loop_lags:
        worst = sorted(result.loop_lags, key=lambda lag: -lag[1])[:5]
        lines.append(
            "largest driver loop lags: "
            + ", ".join(f"{lag:.2f}s at {at:.1f}s" for at, lag in worst)
        )
    if result.gateway_log_errors:
        lines.append("gateway log errors (first lines):")
        lines += [f"  {line}" for line in result.gateway_log_errors[:5]]
    return "\n".join(lines)


def _document(
    result: Result,
    rows: list[tuple[str, str]],
    evidence: dict[str, list[str]],
    rss: dict[str, float | None],
) -> dict[str, Any]:
    """result.json: the table's rows and every figure behind them."""
    report = result.report
    counts: dict[str, Any] = {
        "sent": report.sent if report else None,
        "ok": report.ok if report else None,
        "errors": report.errors if report else None,
        "found": report.found if report else None,
        "found_by_code": report.found_by_code if report else None,
    }
    for name in ("lost", "phantom", "duplicates", "strangers", "mismatched", "hangs"):
        counts[name] = len(getattr(report, name)) if report else None
    return {
        "table": dict(rows),
        "minutes": result.minutes,
        "seed": result.seed,
        "clients": result.clients,
        "deadline_seconds": DEADLINE,
        "margin_seconds": MARGIN,
        "load_seconds": result.load_seconds,
        "wall_seconds": result.wall_seconds,
        "faults": [asdict(f) | {"held": f.held} for f in result.faults],
        "faults_by_kind": dict(Counter(f.kind for f in result.faults)),
        **counts,
        "max_latency_seconds": report.max_latency if report else None,
        "evidence": evidence,
        "peak_rss_mb": result.peak_rss_mb,
        "rss_mb": rss,
        "rss_max_per_bucket_mb": _rss_buckets(result.rss, result.load_seconds),
        "rss_samples": [[round(at, 1), round(v, 2)] for at, v in result.rss],
        "node_boot_seconds": result.node_boots,
        "health": result.health,
        "max_driver_loop_lag_seconds": result.max_loop_lag,
        "driver_loop_lags": result.loop_lags,
        "probe": result.probe,
        "gateway_exit": result.gateway_exit,
        "gateway_log_levels": result.gateway_log_levels,
        "gateway_log_errors": result.gateway_log_errors,
        "restored_at_end": result.restored_at_end,
        "depths_before_drain": result.depths_before_drain,
        "aborted": result.aborted,
        "failures": result.failures,
        "passed": not result.failures,
    }


def table(result: Result) -> tuple[str, dict[str, Any]]:
    """The printed table and the JSON document."""
    rss = _rss_points(result)
    rows = _run_rows(result) + _accounting_rows(result.report) + _gateway_rows(result, rss)
    evidence = _evidence(result)
    return _text(result, rows, evidence), _document(result, rows, evidence, rss)


# --------------------------------------------------------------------------------------------
# Entry point


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.faults.soak",
        description="Load one gateway for minutes while faults hit its private RabbitMQ.",
    )
    parser.add_argument("--minutes", type=float, default=3.0, help="load duration (default 3)")
    parser.add_argument("--seed", type=int, default=None, help="fault schedule (default: random)")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients (default 32)")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.clients <= 0:
        parser.error("--minutes and --clients must be positive")
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1_000_000)
    return args


async def _main(args: argparse.Namespace, result: Result) -> None:
    # SIGTERM as Ctrl-C: cancel the run so that its cleanup stops the node and the gateway.
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        await run(args, result)
    except RunAborted as exc:
        result.aborted = str(exc)
    except Exception as exc:  # the harness itself failed: still report what it saw
        traceback.print_exc()
        result.aborted = f"{type(exc).__name__}: {exc}"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if find_scripts() is None:
        print("soak: rabbitmq-server or rabbitmqctl is not on PATH", file=sys.stderr)
        return 2
    with socket.socket() as probe:  # all traffic stays on the loopback interface
        probe.bind(("127.0.0.1", 0))
    result = Result(minutes=args.minutes, seed=args.seed, clients=args.clients)
    status = 0
    try:
        asyncio.run(_main(args, result))
    except KeyboardInterrupt:
        result.aborted, status = "interrupted (Ctrl-C)", 130
    except asyncio.CancelledError:
        result.aborted, status = "terminated (SIGTERM)", 143
    judge(result)
    text, document = table(result)
    print(text)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "result.json").write_text(json.dumps(document, indent=2, default=str) + "\n")
    print(f"\nwritten to {(OUT / 'result.json').relative_to(ROOT)}")
    if status:
        return status
    if result.aborted or (result.report is None):
        return 2
    return 1 if result.failures else 0


if __name__ == "__main__":
    sys.exit(main())
