"""Fixtures shared by every suite: settings for a gateway under test and a running gateway."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, NoReturn

import aiohttp
import grpc
import pytest
from yarl import URL

from gateway.app.server import Gateway
from gateway.broker import Broker
from gateway.broker.memory import Definitions, MemoryBroker
from gateway.config import Settings
from tests.support import DEFINITIONS, ROOT
from tests.support.ports import accepts
from tests.support.rabbitmq import Topology, Vhost, topology_at
from tests.support.settings import make_settings
from tests.support.tcp_proxy import TcpProxy
from tests.support.waits import hang_guard

__all__ = [
    "BASE_URL",
    "DEFINITIONS",
    "ROOT",
    "RunningGateway",
    "Topology",
    "gateway",
    "http",
    "make_settings",
    "memory_broker",
    "proxy",
    "replace_settings",
    "start_gateway",
    "through",
    "unavailable",
    "url",
    "wait_broker_connected",
    "wait_connected",
]


# A test that uses one of these fixtures needs RabbitMQ (the shared one, or the installed
# rabbitmq-server for a private node): `pytest -m "not rabbitmq"` runs the others.
_RABBITMQ_FIXTURES = frozenset({"rabbitmq_url", "private_rabbit"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that needs RabbitMQ `rabbitmq`, from the fixtures it uses."""
    for item in items:
        if _RABBITMQ_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.rabbitmq)


def unavailable(tests: str, reason: str, *, allow_module_level: bool = False) -> NoReturn:
    """Skip on a developer's machine; fail in CI (CI=true), so that green means they ran.

    allow_module_level: called while a test module is imported (a missing dependency), so
    that the whole module is skipped.
    """
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{tests} cannot run in CI: {reason}", pytrace=False)
    pytest.skip(f"{tests} skipped: {reason}", allow_module_level=allow_module_level)


def memory_broker() -> MemoryBroker:
    """The in-memory broker with the deploy topology, for a test to look into what landed."""
    return MemoryBroker(Definitions.load(DEFINITIONS))


def replace_settings(settings: Settings, section: str, **values: Any) -> Settings:
    return dataclasses.replace(
        settings, **{section: dataclasses.replace(getattr(settings, section), **values)}
    )


class RunningGateway:
    """A started Gateway and a gRPC channel to it."""

    def __init__(self, gateway: Gateway, channel: grpc.aio.Channel) -> None:
        self.gateway = gateway
        self.channel = channel

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gateway.grpc_port}"


GatewayFactory = Callable[..., Any]


@pytest.fixture
async def start_gateway() -> AsyncIterator[GatewayFactory]:
    """Start gateways with given settings (and broker); stop them all after the test."""
    running: list[RunningGateway] = []

    async def start(settings: Settings, broker: Broker | None = None) -> RunningGateway:
        gateway = Gateway(settings, broker=broker)
        await gateway.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{gateway.grpc_port}")
        running.append(RunningGateway(gateway, channel))
        return running[-1]

    yield start
    for item in reversed(running):
        await item.channel.close()
        await item.gateway.stop(grace=1.0)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client for the test, closed after it."""
    async with aiohttp.ClientSession() as session:
        yield session


def url(running: RunningGateway, path: str) -> str:
    """`path` on the REST listener of a gateway from `start_gateway`."""
    return f"http://127.0.0.1:{running.gateway.http_port}{path}"


# --- RabbitMQ: the shared broker, in a vhost of this session's ---------------------------

BASE_URL = URL(os.environ.get("TASK_GATEWAY_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"))


@pytest.fixture(scope="session")
def rabbitmq_url() -> Iterator[str]:
    """The AMQP URL of a fresh vhost on the test RabbitMQ, deleted after the session."""
    if not accepts(BASE_URL.port or 5672, BASE_URL.host or "127.0.0.1", timeout=2):
        unavailable(
            "RabbitMQ tests", f"nothing accepts connections at {BASE_URL.with_password(None)}"
        )
    vhost = Vhost(str(BASE_URL))
    try:
        vhost.create()
    except (subprocess.SubprocessError, OSError) as exc:
        unavailable("RabbitMQ tests", f"rabbitmqctl could not create vhost {vhost.name}: {exc}")
    yield vhost.url
    vhost.delete()


@pytest.fixture
async def topology(rabbitmq_url: str) -> AsyncIterator[Topology]:
    """The definitions' topology, declared afresh with empty queues for each test."""
    async with topology_at(rabbitmq_url) as topology:
        await topology.declare()
        yield topology


@pytest.fixture
async def gateway(
    start_gateway: GatewayFactory, rabbitmq_url: str, topology: Topology
) -> RunningGateway:
    """A gateway in this process, connected to the test vhost (its topology declared afresh).

    The suites that run the gateway as a process define a `gateway` fixture of their own.
    """
    running: RunningGateway = await start_gateway(make_settings(rabbitmq_url))
    await wait_connected(running.gateway)
    return running


async def wait_broker_connected(broker: Broker) -> None:
    """Wait until the broker reports connected (an event, not a sleep loop)."""
    connected = asyncio.Event()
    broker.add_state_listener(lambda up: connected.set() if up else connected.clear())
    async with hang_guard(f"{broker.description} connected"):
        await connected.wait()


async def wait_connected(gateway: Gateway) -> None:
    """Wait until the gateway's broker reports connected."""
    await wait_broker_connected(gateway.broker)


@pytest.fixture
async def proxy(rabbitmq_url: str) -> AsyncIterator[TcpProxy]:
    """A TCP proxy in front of the test RabbitMQ, to hold, cut or refuse connections to it."""
    target = URL(rabbitmq_url)
    async with TcpProxy(target.host or "127.0.0.1", target.port or 5672) as running:
        yield running


def through(proxy: TcpProxy, rabbitmq_url: str) -> str:
    """`rabbitmq_url` by way of the proxy."""
    return str(URL(rabbitmq_url).with_host("127.0.0.1").with_port(proxy.port))
