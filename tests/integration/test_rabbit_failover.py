"""gateway.broker.rabbit given several addresses: each connection finds a live node by itself.

Two TCP proxies in front of the test RabbitMQ stand for two nodes of a cluster, A and B. A test
cuts a proxy's connections and makes it refuse new ones (a node gone), or holds new connections
before they reach the broker (a node that accepts TCP and never answers). The broker's control
connection is the first a proxy forwards, a lane's the next. tests/faults/test_cluster.py does
the same to a real three-node cluster under load.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import aio_pika
import pytest
import structlog.testing
from yarl import URL

from gateway.broker.rabbit import RabbitBroker
from gateway.config import redact
from gateway.errors import Code, GatewayError
from tests.conftest import through, wait_broker_connected
from tests.integration.test_rabbit_broker import envelope
from tests.support.rabbitmq import Topology
from tests.support.tcp_proxy import TcpProxy

CONTROL, LANE = 0, 1  # the order in which the broker opens its connections through a proxy
LANE_CONNECTED = "publishing to an exchange through RabbitMQ"


class Logged:
    """The broker's log lines as they come (a structlog processor), awaitable."""

    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []
        self._changed = asyncio.Event()

    def __call__(self, _logger: Any, _method: str, event: MutableMapping[str, Any]) -> Any:
        self.lines.append(dict(event))
        self._changed.set()
        return event

    async def wait_for(self, event: str, **fields: Any) -> None:
        """Until a line with this event and these fields was logged (10 s at most)."""
        async with asyncio.timeout(10):
            while not any(
                line["event"] == event and all(line.get(k) == v for k, v in fields.items())
                for line in self.lines
            ):
                self._changed.clear()
                await self._changed.wait()


@pytest.fixture
async def nodes(rabbitmq_url: str) -> AsyncIterator[tuple[TcpProxy, TcpProxy]]:
    target = URL(rabbitmq_url)
    host, port = target.host or "127.0.0.1", target.port or 5672
    async with TcpProxy(host, port) as a, TcpProxy(host, port) as b:
        yield a, b


def two_node_broker(
    rabbitmq_url: str, a: TcpProxy, b: TcpProxy, connect_timeout: float = 2
) -> RabbitBroker:
    return RabbitBroker(
        [through(a, rabbitmq_url), through(b, rabbitmq_url)],
        heartbeat_seconds=10,
        connect_timeout_seconds=connect_timeout,
        reconnect_max_backoff_seconds=0.2,
        connection_name="failover-test",
    )


def hold_new_connections(proxy: TcpProxy) -> None:
    proxy.hold = set(range(proxy.arrived, proxy.arrived + 1000))


async def test_a_lane_moves_to_the_next_address_while_the_control_connection_stays(
    nodes: tuple[TcpProxy, TcpProxy], rabbitmq_url: str, topology: Topology
) -> None:
    """A lane whose node refuses new connections reconnects through the next address by itself,
    while the control connection stays on its node: lanes rotate on their own."""
    a, b = nodes
    broker = two_node_broker(rabbitmq_url, a, b)
    logged = Logged()
    with structlog.testing.capture_logs(processors=[logged]):
        await broker.start()
        try:
            await wait_broker_connected(broker)
            await broker.publish(envelope())  # opens the lane, through A as the control connection

            a.refusing = True
            a.cut(LANE)
            await logged.wait_for(LANE_CONNECTED, url=redact(through(b, rabbitmq_url)))
            await broker.publish(envelope())

            assert broker.connected, "the control connection was not touched"
            assert b.accepted == 1, "only the lane went to B"
        finally:
            await broker.close()
    assert len(await topology.drain("images.queue")) == 2


async def test_a_publish_never_waits_for_a_node_not_known_to_be_up(
    nodes: tuple[TcpProxy, TcpProxy], rabbitmq_url: str, topology: Topology
) -> None:
    """With the control connection gone and the lane's reconnection stuck on a node that never
    answers, a publish fails at once with UNAVAILABLE (nothing published); once the nodes
    answer again, the broker publishes by itself."""
    a, b = nodes
    # A publish that waited for the stuck connection attempt would wait this long.
    broker = two_node_broker(rabbitmq_url, a, b, connect_timeout=60)
    logged = Logged()
    with structlog.testing.capture_logs(processors=[logged]):
        await broker.start()
        try:
            await wait_broker_connected(broker)
            await broker.publish(envelope())
            lost = asyncio.Event()
            broker.add_state_listener(lambda up: None if up else lost.set())

            hold_new_connections(a)
            hold_new_connections(b)
            a.cut(CONTROL)
            a.cut(LANE)
            async with asyncio.timeout(10):
                await lost.wait()
                await b.until_arrived(2)  # both moved on to B, which holds them
            async with asyncio.timeout(5):
                with pytest.raises(GatewayError) as caught:
                    await broker.publish(envelope())

            a.release()
            b.release()
            await logged.wait_for(LANE_CONNECTED, url=redact(through(b, rabbitmq_url)))
            await broker.publish(envelope())
        finally:
            await broker.close()

    assert caught.value.code is Code.UNAVAILABLE
    assert "nothing was published" in caught.value.message
    assert len(await topology.drain("images.queue")) == 2


async def test_aiormq_has_the_write_queue_released_after_a_loss(rabbitmq_url: str) -> None:
    """A live aio-pika connection's aiormq connection has the bounded write queue that
    `_release_writers` empties once the connection is lost."""
    connection = await aio_pika.connect(rabbitmq_url)
    try:
        queue = connection.transport.connection.write_queue  # type: ignore[union-attr]

        assert isinstance(queue, asyncio.Queue)
        assert queue.maxsize > 0, "publishes can wait for room in it"
    finally:
        await connection.close()
