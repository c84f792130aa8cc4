"""A real RabbitMQ for the integration suite.

Tests run in a vhost of their own on the RabbitMQ at TASK_GATEWAY_TEST_AMQP_URL (default
amqp://guest:guest@127.0.0.1:5672/), created with rabbitmqctl and loaded from
deploy/rabbitmq/definitions.json. Every test starts from that topology with empty queues and
checks what landed by consuming it. Without a reachable broker the suite skips on a
laptop and fails in CI (CI=true), so that a green CI always means it ran.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from yarl import URL

from tests.conftest import unavailable
from tests.support.ports import accepts
from tests.support.rabbitmq import Topology, Vhost, topology_at

__all__ = ["Topology", "wait_connected"]

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


async def wait_connected(gateway: Any, timeout: float = 10.0) -> None:
    """Wait until the gateway's broker reports connected (an event, not a sleep loop)."""
    connected = asyncio.Event()
    gateway.broker.add_state_listener(lambda up: connected.set() if up else connected.clear())
    async with asyncio.timeout(timeout):
        await connected.wait()
