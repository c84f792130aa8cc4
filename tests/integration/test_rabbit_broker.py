"""gateway.broker.rabbit against a real RabbitMQ: lanes, the supervisor, aiormq's internals.

What a broker event may not do to other publishes, and what the broker module relies on in
aiormq, checked on real connections. A TCP proxy in front of RabbitMQ lets a test cut one
particular connection (the control connection is the first the broker opens) or refuse new
ones.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aio_pika
import pytest
import structlog.testing

from gateway.broker import Envelope
from gateway.broker.rabbit import RabbitBroker, _close_reason, _is_blocked
from gateway.errors import Code, GatewayError
from tests.conftest import through, wait_broker_connected
from tests.support.rabbitmq import Topology
from tests.support.tcp_proxy import TcpProxy
from tests.support.waits import hang_guard

CONTROL = 0  # the proxy's first connection: the broker connects its control connection first


def envelope(exchange: str = "images.tasks", routing_key: str = "images.generate") -> Envelope:
    return Envelope(
        exchange=exchange,
        routing_key=routing_key,
        body=json.dumps({"task_id": "t"}).encode(),
        message_id="t",
        type=routing_key,
        timestamp=datetime.now(UTC),
        app_id="test",
    )


def make_broker(url: str, **options: Any) -> RabbitBroker:
    return RabbitBroker(
        [url],
        heartbeat_seconds=10,
        connect_timeout_seconds=2,
        reconnect_max_backoff_seconds=0.2,
        connection_name="broker-test",
        **options,
    )


@pytest.fixture
async def broker_via_proxy(
    proxy: TcpProxy, rabbitmq_url: str, topology: Topology
) -> AsyncIterator[RabbitBroker]:
    broker = make_broker(through(proxy, rabbitmq_url))
    await broker.start()
    await wait_broker_connected(broker)
    yield broker
    await broker.close()


async def test_losing_the_control_connection_fails_no_publish_on_an_open_lane(
    broker_via_proxy: RabbitBroker, proxy: TcpProxy, topology: Topology
) -> None:
    """With the control connection gone and no new one possible, open lanes still publish."""
    broker = broker_via_proxy
    await broker.publish(envelope())  # opens the images.tasks lane
    lost = asyncio.Event()
    broker.add_state_listener(lambda up: None if up else lost.set())

    proxy.refusing = True
    proxy.cut(CONTROL)
    async with hang_guard("the broker noticed its control connection was cut"):
        await lost.wait()
    await broker.publish(envelope())

    assert not broker.connected
    assert len(await topology.drain("images.queue")) == 2


async def test_with_neither_lane_nor_control_a_publish_fails_at_once(
    broker_via_proxy: RabbitBroker, proxy: TcpProxy
) -> None:
    """An exchange with no open lane while the control connection is down: UNAVAILABLE."""
    broker = broker_via_proxy
    lost = asyncio.Event()
    broker.add_state_listener(lambda up: None if up else lost.set())
    proxy.refusing = True
    proxy.cut(CONTROL)
    async with hang_guard("the broker noticed its control connection was cut"):
        await lost.wait()
    accepted = proxy.accepted

    with pytest.raises(GatewayError) as caught:
        await broker.publish(envelope("videos.tasks", "videos.generate"))

    assert caught.value.code is Code.UNAVAILABLE
    assert proxy.accepted == accepted, "no connection was attempted for it"


async def test_a_missing_exchange_is_remembered_for_a_burst(
    broker_via_proxy: RabbitBroker, proxy: TcpProxy
) -> None:
    """Twenty publishes and probes for a missing exchange open one connection between them."""
    broker = broker_via_proxy
    accepted = proxy.accepted

    outcomes = await asyncio.gather(
        *(broker.publish(envelope("no.such.exchange", "k")) for _ in range(10)),
        return_exceptions=True,
    )
    for _ in range(10):
        outcomes.append(await broker.exchange_exists("no.such.exchange"))
    for _ in range(10):
        with pytest.raises(GatewayError) as caught:
            await broker.publish(envelope("no.such.exchange", "k"))
        outcomes.append(caught.value)

    assert all(
        o is False or (isinstance(o, GatewayError) and o.code is Code.FAILED_PRECONDITION)
        for o in outcomes
    ), outcomes
    assert proxy.accepted - accepted == 1, "one lane attempt for the whole burst"


async def test_publishes_and_readiness_checks_reuse_a_passive_declare(
    rabbitmq_url: str, topology: Topology, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twenty publishes passive-declare their exchange once, when the lane opens; twenty
    readiness checks once between them, within missing_exchange_seconds (an hour here)."""
    broker = make_broker(rabbitmq_url, missing_exchange_seconds=3600)
    declared: list[str] = []
    passive_declare = broker._passive_declare

    async def counted(connection: Any, exchange: str) -> None:
        declared.append("readiness" if connection is broker._connection else "lane")
        await passive_declare(connection, exchange)

    monkeypatch.setattr(broker, "_passive_declare", counted)
    await broker.start()
    try:
        await wait_broker_connected(broker)
        for _ in range(20):
            await broker.publish(envelope())
        found = [await broker.exchange_exists("images.tasks") for _ in range(20)]
    finally:
        await broker.close()

    assert found == [True] * 20
    assert declared == ["lane", "readiness"]


async def test_an_unexpected_error_does_not_stop_the_supervisor(
    rabbitmq_url: str, topology: Topology
) -> None:
    """A bug in one connection attempt is logged with its traceback, and the next connects."""
    broker = make_broker(rabbitmq_url)
    real_connect = broker._connect
    calls = 0

    async def connect_once_broken(url: str, purpose: str) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise KeyError("a bug in the first attempt")
        return await real_connect(url, purpose)

    broker._connect = connect_once_broken  # type: ignore[method-assign]
    with structlog.testing.capture_logs() as logs:
        await broker.start()
        try:
            await wait_broker_connected(broker)
            await broker.publish(envelope())
        finally:
            await broker.close()

    (logged,) = [
        line for line in logs if line["event"] == "unexpected error connecting to RabbitMQ"
    ]
    assert logged["log_level"] == "error"
    assert logged["exc_info"] is True
    assert len(await topology.drain("images.queue")) == 1


# --- what gateway.broker.rabbit reads of aiormq's private state -----------------------------


async def test_aiormq_exposes_the_unblocked_event_read_by_the_blocked_fast_path(
    rabbitmq_url: str,
) -> None:
    """A live aio-pika connection's aiormq connection has the event _is_blocked reads."""
    connection = await aio_pika.connect(rabbitmq_url)
    try:
        underlay = connection.transport.connection  # type: ignore[union-attr]
        unblocked = underlay._Connection__connection_unblocked

        assert isinstance(unblocked, asyncio.Event)
        assert not _is_blocked(connection)
        unblocked.clear()  # as aiormq does on connection.blocked
        assert _is_blocked(connection)
        unblocked.set()
    finally:
        await connection.close()


async def test_aiormq_records_why_the_broker_closed_a_channel(rabbitmq_url: str) -> None:
    """A channel the broker closed for a missing exchange reports ChannelNotFoundEntity."""
    import aiormq

    connection = await aio_pika.connect(rabbitmq_url)
    try:
        channel = await connection.channel()
        underlay = await channel.get_underlay_channel()
        assert _close_reason(underlay) is None
        with pytest.raises(aiormq.exceptions.ChannelNotFoundEntity):
            await channel.declare_exchange("no.such.exchange", passive=True)

        assert isinstance(_close_reason(underlay), aiormq.exceptions.ChannelNotFoundEntity)
    finally:
        await connection.close()


# --- what the broker's metrics say ----------------------------------------------------------


def _sample(name: str, **labels: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_outcomes_are_counted_ack_returned_and_nack(
    broker_via_proxy: RabbitBroker, topology: Topology
) -> None:
    """An ack, a return (unroutable) and a nack (a full reject-publish queue) each count once."""
    queue = await topology.channel.declare_queue(
        "metrics.full", arguments={"x-max-length": 0, "x-overflow": "reject-publish"}
    )
    await queue.bind("images.tasks", "metrics.full")
    try:
        counts = {
            outcome: _sample(
                "task_gateway_broker_outcomes_total", exchange="images.tasks", outcome=outcome
            )
            for outcome in ("ack", "returned", "nack")
        }
        timed = _sample("task_gateway_publish_seconds_count", exchange="images.tasks")

        await broker_via_proxy.publish(envelope())
        for routing_key in ("nobody.bound", "metrics.full"):
            with pytest.raises(GatewayError):
                await broker_via_proxy.publish(envelope(routing_key=routing_key))

        moved = {
            outcome: _sample(
                "task_gateway_broker_outcomes_total", exchange="images.tasks", outcome=outcome
            )
            - before
            for outcome, before in counts.items()
        }
        assert moved == {"ack": 1, "returned": 1, "nack": 1}
        assert _sample("task_gateway_publish_seconds_count", exchange="images.tasks") - timed == 3
    finally:
        await queue.delete(if_unused=False, if_empty=False)


async def test_a_lost_connection_is_counted_and_shown(
    broker_via_proxy: RabbitBroker, proxy: TcpProxy
) -> None:
    """Losing the broker sets broker_connected to 0; reconnecting counts one reconnect, then 1."""
    broker = broker_via_proxy
    reconnects = _sample("task_gateway_broker_reconnects_total")
    states: list[bool] = []
    back = asyncio.Event()
    seen: list[float] = []

    def follow(up: bool) -> None:
        states.append(up)
        seen.append(_sample("task_gateway_broker_connected"))
        if up and False in states:
            back.set()

    broker.add_state_listener(follow)
    proxy.cut(CONTROL)
    async with asyncio.timeout(10):
        await back.wait()

    assert seen[-2:] == [0, 1]
    assert _sample("task_gateway_broker_reconnects_total") - reconnects == 1
