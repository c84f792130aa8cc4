"""Reliability under faults: nothing acknowledged is ever lost.

Each scenario runs an in-process gateway against a private RabbitMQ node, drives it with
concurrent clients (typed gRPC, generic gRPC Publish, legacy REST), injects one fault mid-load,
and then drains the queues and matches every message to the request that produced it. Every
scenario asserts: no OK without its message (lost), no message for a request told it failed
(phantom), no task published twice, every answer within the deadline plus a small margin, and,
where the gateway keeps running, recovery by itself: new requests of every kind succeed and
health is SERVING again.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import make_settings, replace_settings, wait_connected
from tests.faults.accounting import Report, account, drain
from tests.faults.conftest import SCENARIO_REPORTS
from tests.faults.load import NOT_SERVING, SERVING, Answer, HealthWatch, LoadDriver
from tests.support.rabbit_node import RabbitNode
from tests.support.rabbitmq import topology_at

DEADLINE = 2.0
MARGIN = 0.5
PUBLISH_TIMEOUT = 5.0
# Answers that say "the broker is away or refused it; retry".
REFUSED = frozenset({"UNAVAILABLE", "HTTP_503"})
# What a broker blocking publishers may answer (RESOURCE_EXHAUSTED when the gateway saw the
# connection.blocked, DEADLINE_EXCEEDED for publishes written before it arrived).
BLOCKED = frozenset(
    {"RESOURCE_EXHAUSTED", "HTTP_429", "UNAVAILABLE", "HTTP_503", "DEADLINE_EXCEEDED", "HTTP_504"}
)
# What the gateway answers at once, without a broker round trip, while the broker blocks.
QUICK_REFUSAL = frozenset({"RESOURCE_EXHAUSTED", "HTTP_429"})
WARM_UP_OK = 100
EXCHANGE_CYCLES = 40
HEARTBEAT = 2
# Past the deadline and two heartbeat intervals (when a silent peer is declared dead).
ALARM_HOLD_SECONDS = DEADLINE + 2 * HEARTBEAT + 1


class Scenario:
    """A gateway on the private node, a health watch, a load driver, and the final accounting."""

    def __init__(self, name: str, node: RabbitNode, running: Any) -> None:
        self.name = name
        self.node = node
        self.running = running
        self.gateway = running.gateway
        self.health = HealthWatch(running.address)
        self.load = LoadDriver(
            running.address,
            running.gateway.http_port,
            run=name,
            deadline=DEADLINE,
            margin=MARGIN,
        )
        self.broker_states: list[tuple[float, bool]] = []
        self.probe_answers: list[Answer] = []
        self.notes: list[str] = []
        self._started = time.monotonic()

    async def __aenter__(self) -> Scenario:
        self.gateway.broker.add_state_listener(
            lambda up: self.broker_states.append((time.monotonic(), up))
        )
        await self.health.__aenter__()
        await self.load.__aenter__()
        await self.health.wait_for(SERVING, timeout=10)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.load.__aexit__(*exc_info)
        await self.health.__aexit__(*exc_info)

    async def warm_up(self) -> None:
        self.load.start()
        await self.load.wait_until(
            lambda: self.load.count(["OK"]) >= WARM_UP_OK, 30, f"{WARM_UP_OK} OK before the fault"
        )

    async def stop_load(self) -> None:
        """Stop the clients, then wait (bounded) until no publish is left waiting for a confirm."""
        await self.load.stop()
        pending = await self.gateway.ingestor.drain(PUBLISH_TIMEOUT + 2)
        assert pending == 0, (
            f"{pending} publishes still waiting for a confirm "
            f"{PUBLISH_TIMEOUT + 2}s after the load stopped"
        )

    async def probe(self) -> list[Answer]:
        """Fresh requests of every kind after the fault: served again without a restart."""
        self.probe_answers = await self.load.probe()
        return self.probe_answers

    async def account(self) -> Report:
        report = account(
            self.name,
            self.load.answers,
            await drain(self.node.url),
            hang_after=DEADLINE + MARGIN,
        )
        report.wall_seconds = time.monotonic() - self._started
        report.notes.extend(self.notes)
        SCENARIO_REPORTS.append(report)  # printed at the end of the run, notes included
        return report

    async def health_check(self) -> int:
        response = await health_pb2_grpc.HealthStub(self.running.channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=DEADLINE
        )
        status: int = response.status
        return status


def assert_accounted(report: Report) -> None:
    """No OK lost, no phantom, no duplicate, no stranger, no hang."""
    assert not report.lost, (
        f"{len(report.lost)} OK answers have no message: "
        f"{[(a.kind, a.task_key) for a in report.lost[:5]]}"
    )
    assert not report.phantom, (
        f"{len(report.phantom)} messages exist for requests told they failed: "
        f"{[(a.kind, a.code, a.detail, n) for a, n in report.phantom[:5]]}"
    )
    assert not report.duplicates, f"tasks published more than once: {report.duplicates}"
    assert not report.strangers, f"messages of no request: {report.strangers[:5]}"
    assert not report.mismatched, f"message ids, bodies and task keys disagree: {report.mismatched}"
    assert not report.hangs, (
        f"{len(report.hangs)} answers took longer than {DEADLINE + MARGIN}s: "
        f"{[(a.kind, a.code, round(a.latency, 3)) for a in report.hangs[:5]]}"
    )


async def assert_recovered(scenario: Scenario, probe: Iterable[Answer]) -> None:
    """Every probe request succeeded and health is SERVING, with the same gateway."""
    failed = [(a.kind, a.code, a.detail) for a in probe if not a.ok]
    assert not failed, f"requests after the fault failed: {failed}"
    assert scenario.health.latest == SERVING, scenario.health.names()
    assert await scenario.health_check() == SERVING


async def _start(start_gateway: Any, node: RabbitNode, **broker: Any) -> Any:
    settings = replace_settings(
        make_settings(node.url),
        "broker",
        **{
            "heartbeat_seconds": HEARTBEAT,
            "reconnect_max_backoff_seconds": 0.5,
            "publish_timeout_seconds": PUBLISH_TIMEOUT,
            **broker,
        },
    )
    running = await start_gateway(settings)
    await wait_connected(running.gateway)
    return running


def _codes(answers: Iterable[Answer]) -> str:
    counts: dict[str, int] = {}
    for answer in answers:
        counts[answer.code] = counts.get(answer.code, 0) + 1
    return ", ".join(f"{code} {n}" for code, n in sorted(counts.items())) or "none"


def _in_flight(answers: Iterable[Answer], at: float) -> list[Answer]:
    """Answers to requests that were waiting for their answer at `at`."""
    return [a for a in answers if a.started < at < a.finished]


def _outage(answers: Iterable[Answer], begin: float, end: float) -> list[Answer]:
    """Answers to requests sent at or after `begin` that came back before `end`."""
    return [a for a in answers if a.started >= begin and a.finished <= end]


async def _broker_outage(scenario: Scenario, take_down: Any) -> None:
    """Take the broker down mid-load, see health go NOT_SERVING, bring it back, see SERVING."""
    load, health = scenario.load, scenario.health
    await scenario.warm_up()
    mark = health.mark()
    fault_at = time.monotonic()
    await take_down()
    down_at = await health.wait_for(NOT_SERVING, since=mark, timeout=15)
    await load.wait_until(
        lambda: load.count(REFUSED, since=down_at) >= 50, 15, "50 refusals while the broker is down"
    )
    restart_at = time.monotonic()
    mark = health.mark()
    await scenario.node.start()
    up_at = await health.wait_for(SERVING, since=mark, timeout=30)
    await load.wait_until(
        lambda: load.count(["OK"], since=up_at) >= WARM_UP_OK, 30, "OK again after the restart"
    )
    await scenario.stop_load()
    outage = _outage(load.answers, down_at, restart_at)
    codes = {a.code for a in outage}
    assert codes <= REFUSED, f"while the broker was down: {codes}"
    slowest = max(a.latency for a in outage)
    scenario.notes += [
        f"in flight at the fault: {_codes(_in_flight(load.answers, fault_at))}",
        f"health NOT_SERVING {down_at - fault_at:.3f}s after the fault, SERVING "
        f"{up_at - restart_at:.3f}s after the restart began",
        f"slowest refusal while down {slowest:.3f}s",
    ]
    assert slowest < DEADLINE / 2, f"a refusal took {slowest:.3f}s while the broker was down"


async def test_broker_stopped_and_started_mid_load(
    private_rabbit: RabbitNode, start_gateway: Any
) -> None:
    """A broker stopped gracefully mid-load loses no OK, turns health NOT_SERVING, is refused
    quickly while down, and is recovered from by itself."""
    running = await _start(start_gateway, private_rabbit)
    async with Scenario("broker stopped/started", private_rabbit, running) as scenario:
        await _broker_outage(scenario, private_rabbit.stop)
        probe = await scenario.probe()
    report = await scenario.account()
    assert_accounted(report)
    await assert_recovered(scenario, probe)


async def test_broker_killed_mid_load(private_rabbit: RabbitNode, start_gateway: Any) -> None:
    """A broker SIGKILLed mid-load loses no OK (a confirm means on disk), turns health
    NOT_SERVING, is refused quickly while down, and is recovered from by itself."""
    running = await _start(start_gateway, private_rabbit)
    async with Scenario("broker killed/started", private_rabbit, running) as scenario:
        await _broker_outage(scenario, private_rabbit.kill)
        probe = await scenario.probe()
    report = await scenario.account()
    assert_accounted(report)
    await assert_recovered(scenario, probe)


async def test_broker_closes_every_connection(
    private_rabbit: RabbitNode, start_gateway: Any
) -> None:
    """Connections closed by the broker mid-load lose no OK and are re-opened by themselves."""
    running = await _start(start_gateway, private_rabbit)
    async with Scenario("connections closed", private_rabbit, running) as scenario:
        load = scenario.load
        await scenario.warm_up()
        closed_at = time.monotonic()
        await private_rabbit.close_all_connections()
        # Broker state changes are recorded by a listener; answers keep arriving meanwhile, and
        # each one re-evaluates these predicates.
        await load.wait_until(
            lambda: any(not up for at, up in scenario.broker_states if at >= closed_at),
            15,
            "the gateway noticing its connection closed",
        )
        lost_at = next(at for at, up in scenario.broker_states if at >= closed_at and not up)
        await load.wait_until(
            lambda: any(up for at, up in scenario.broker_states if at > lost_at),
            15,
            "the gateway reconnecting",
        )
        back_at = next(at for at, up in scenario.broker_states if at > lost_at and up)
        await load.wait_until(
            lambda: load.count(["OK"], since=back_at) >= WARM_UP_OK, 30, "OK after reconnecting"
        )
        await scenario.stop_load()
        probe = await scenario.probe()
    report = await scenario.account()
    report.notes.append(f"reconnected in {back_at - lost_at:.3f}s")
    assert_accounted(report)
    await assert_recovered(scenario, probe)


async def test_memory_alarm_blocks_then_resumes(
    private_rabbit: RabbitNode, start_gateway: Any
) -> None:
    """Under a memory alarm outlasting the deadline and the heartbeat timeout, answers are quick
    refusals or deadlines, never a hang or a lost OK; service resumes when the alarm clears."""
    running = await _start(start_gateway, private_rabbit)
    async with Scenario("memory alarm", private_rabbit, running) as scenario:
        load = scenario.load
        await scenario.warm_up()
        alarm_at = time.monotonic()
        await private_rabbit.set_memory_alarm(True)
        # Held until requests sent well after the deadline and two heartbeat intervals were
        # answered: a blocked connection must neither hang callers nor be dropped.
        held_until = alarm_at + ALARM_HOLD_SECONDS
        await load.wait_until(
            lambda: (
                load.count(BLOCKED, since=alarm_at) >= 50 and load.count(since=held_until) >= 50
            ),
            ALARM_HOLD_SECONDS + 30,
            f"answers under an alarm held {ALARM_HOLD_SECONDS}s",
        )
        cleared_at = time.monotonic()
        await private_rabbit.set_memory_alarm(False)
        await load.wait_until(
            lambda: load.count(["OK"], since=cleared_at) >= WARM_UP_OK,
            30,
            "OK after the alarm cleared",
        )
        await scenario.stop_load()
        probe = await scenario.probe()
    report = await scenario.account()
    during = _outage(load.answers, alarm_at, cleared_at)
    late = [a for a in during if a.started >= held_until]
    codes = {a.code for a in during if not a.ok}
    report.notes += [
        f"in flight at the alarm: {_codes(_in_flight(load.answers, alarm_at))}",
        f"under the alarm: {_codes(during)}",
        f"sent {ALARM_HOLD_SECONDS}s into it: {_codes(late)}",
        f"connections lost: {sum(not up for at, up in scenario.broker_states if at > alarm_at)}",
    ]
    assert_accounted(report)
    assert codes <= BLOCKED, f"under the memory alarm: {codes - BLOCKED}"
    assert late, "requests were sent while the alarm held"
    # Once the gateway saw connection.blocked, it refuses at once instead of letting a publish
    # wait for its deadline: without that fast path these would be DEADLINE_EXCEEDED / 504.
    assert {a.code for a in late} <= QUICK_REFUSAL, _codes(late)
    await assert_recovered(scenario, probe)


async def test_full_queue_nacks_are_never_ok(
    private_rabbit: RabbitNode, start_gateway: Any
) -> None:
    """A queue full under reject-publish nacks: those become UNAVAILABLE, never OK, nothing
    stored, other queues unaffected; clearing the limit restores service."""
    await private_rabbit.limit_queue("fault-max-length", "images.queue", 50)
    await private_rabbit.wait_policy("images.queue", "fault-max-length")
    running = await _start(start_gateway, private_rabbit)
    async with Scenario("queue full (reject-publish)", private_rabbit, running) as scenario:
        load = scenario.load
        load.start()
        await load.wait_until(
            lambda: (
                load.count(REFUSED, task_type="images.generate") >= 50
                and load.count(["OK"], task_type="videos.generate") >= WARM_UP_OK
            ),
            30,
            "images nacked and videos published",
        )
        await scenario.stop_load()
        during = list(load.answers)
        await private_rabbit.clear_queue_limit("fault-max-length", "images.queue")
        probe = await scenario.probe()
    report = await scenario.account()
    images = [a for a in during if a.kind.task_type == "images.generate"]
    report.notes.append(f"images while the queue was limited: {_codes(images)}")
    assert_accounted(report)
    videos = [a for a in during if a.kind.task_type == "videos.generate"]
    assert sum(a.ok for a in images) <= 50
    not_ok = {(a.code, "nacked" in a.detail) for a in images if not a.ok}
    assert not_ok <= {("UNAVAILABLE", True), ("HTTP_503", True)}, not_ok
    nacked_but_stored = [a for a in images if not a.ok and a.task_id in report.found_ids]
    assert not nacked_but_stored, "a nacked message was stored after all"
    assert all(a.ok for a in videos), {a.code for a in videos}
    await assert_recovered(scenario, probe)


async def test_exchange_deleted_and_recreated(
    private_rabbit: RabbitNode, start_gateway: Any
) -> None:
    """An exchange deleted and re-created under traffic, again and again, fails only its own
    requests (others all OK), publishes nothing for those it refused, and serves again once it
    is back."""
    # A missing exchange is remembered for 0.2 s rather than 1 s: 40 cycles of a deletion and
    # a re-creation then fit in the load driver's budget of requests and seconds.
    running = await _start(start_gateway, private_rabbit, missing_exchange_seconds=0.2)
    images_refused = ["FAILED_PRECONDITION", "HTTP_400"]
    windows: list[tuple[float, float]] = []
    async with (
        topology_at(private_rabbit.url) as topology,
        Scenario("exchange deleted/re-created", private_rabbit, running) as scenario,
    ):
        load = scenario.load
        await scenario.warm_up()
        for _ in range(EXCHANGE_CYCLES):
            deleted_at = time.monotonic()
            await topology.delete_exchange("images.tasks")
            await load.wait_until(
                load.reached(20, images_refused, since=deleted_at, task_type="images.generate"),
                15,
                "requests to the deleted exchange refused",
            )
            recreated_at = time.monotonic()
            await topology.declare_exchange("images.tasks")  # with its bindings
            windows.append((deleted_at, recreated_at))
            await load.wait_until(
                load.reached(30, ["OK"], since=recreated_at, task_type="images.generate"),
                30,
                "images OK once the exchange is back",
            )
        await scenario.stop_load()
        probe = await scenario.probe()
    report = await scenario.account()
    images = [
        a
        for begin, end in windows
        for a in _outage(load.answers, begin, end)
        if a.kind.task_type == "images.generate"
    ]
    in_flight = [a for begin, _ in windows for a in _in_flight(load.answers, begin)]
    report.notes += [
        f"{EXCHANGE_CYCLES} deletions",
        f"images while deleted: {_codes(images)}",
        f"in flight at the deletions: {_codes(in_flight)}",
    ]
    for a, _ in report.phantom:
        deletion = min((begin for begin, _ in windows), key=lambda b: abs(b - a.started))
        report.notes.append(
            f"phantom {a.task_id} ({a.kind.transport}, {a.code}) sent "
            f"{deletion - a.started:.3f}s before a deletion, answered after {a.latency:.3f}s"
        )
    assert_accounted(report)
    videos = [a for a in load.answers if a.kind.task_type == "videos.generate"]
    failed = [(a.kind.transport, a.code, a.detail) for a in videos if not a.ok]
    assert not failed, f"requests to the healthy exchange failed: {failed[:5]} ({len(failed)})"
    await assert_recovered(scenario, probe)


async def test_gateway_stopped_mid_load(private_rabbit: RabbitNode, start_gateway: Any) -> None:
    """A gateway stopped mid-load (as on SIGTERM) finishes or cleanly fails what is in flight,
    loses no OK, refuses what comes after at once and leaves no connection behind."""
    running = await _start(start_gateway, private_rabbit)
    async with Scenario("gateway stopped", private_rabbit, running) as scenario:
        load = scenario.load
        await scenario.warm_up()
        mark = scenario.health.mark()
        stopping_at = time.monotonic()
        await running.gateway.stop()
        stopped_at = time.monotonic()
        await load.wait_until(
            lambda: load.count(since=stopped_at) >= 50, 15, "answers after the gateway stopped"
        )
        await scenario.stop_load()
    report = await scenario.account()
    report.notes.append(f"stop took {stopped_at - stopping_at:.3f}s")
    for label, group in (
        ("in flight at stop", [a for a in load.answers if a.started < stopping_at < a.finished]),
        ("sent while stopping", _outage(load.answers, stopping_at, float("inf"))),
    ):
        report.notes.append(f"{label}: {_codes(group)}")
    assert_accounted(report)
    in_flight = _in_flight(load.answers, stopping_at)
    # CANCELLED: calls still queued inside gRPC core when the server stops (never dispatched
    # to the gateway, nothing published); an unknown outcome to the client.
    clean = {"OK", "UNAVAILABLE", "HTTP_503", "CANCELLED", "HTTP_DISCONNECTED"}
    assert {a.code for a in in_flight} <= clean, _codes(in_flight)
    assert scenario.health.ended is not None or NOT_SERVING in [
        status for _, status in scenario.health.statuses[mark:]
    ], scenario.health.names()
    after = [a for a in load.answers if a.started >= stopped_at]
    refused = {"UNAVAILABLE", "HTTP_CONNECT_ERROR", "HTTP_DISCONNECTED", "HTTP_503"}
    assert {a.code for a in after} <= refused, {a.code for a in after}
    assert max(a.latency for a in after) < DEADLINE / 2
    assert running.gateway.ingestor.in_flight == 0
    assert (await private_rabbit.ctl("list_connections", "name")).strip() == ""
