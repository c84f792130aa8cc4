"""A real RabbitMQ for the integration suite.

Tests run in a vhost of their own on the RabbitMQ at TASK_GATEWAY_TEST_AMQP_URL (default
amqp://guest:guest@127.0.0.1:5672/), created with rabbitmqctl and loaded from
deploy/rabbitmq/definitions.json. Every test starts from that topology with empty queues and
checks what landed by consuming it. Without a reachable broker the suite skips on a
laptop and fails in CI (CI=true), so that a green CI always means it ran.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from yarl import URL

from tests.conftest import DEFINITIONS

BASE_URL = URL(os.environ.get("TASK_GATEWAY_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"))


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"RabbitMQ tests cannot run in CI: {reason}", pytrace=False)
    pytest.skip(f"no RabbitMQ for the integration tests: {reason}")


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def rabbitmq_url() -> Iterator[str]:
    """The AMQP URL of a fresh vhost on the test RabbitMQ, deleted after the session."""
    try:
        socket.create_connection((BASE_URL.host or "127.0.0.1", BASE_URL.port or 5672), 2).close()
    except OSError as exc:
        _unavailable(f"cannot reach {BASE_URL.with_password(None)}: {exc}")
    if shutil.which("rabbitmqctl") is None:
        _unavailable("rabbitmqctl is not on PATH (it creates the test vhost)")
    vhost = f"task-gateway-test-{uuid.uuid4().hex[:8]}"
    try:
        _rabbitmqctl("add_vhost", vhost)
        _rabbitmqctl("set_permissions", "-p", vhost, BASE_URL.user or "guest", ".*", ".*", ".*")
    except (subprocess.SubprocessError, OSError) as exc:
        _unavailable(f"rabbitmqctl could not create vhost {vhost}: {exc}")
    yield str(BASE_URL.with_path("/" + quote(vhost, safe="")))
    subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], capture_output=True, timeout=60)


@dataclass
class Topology:
    """The test vhost's topology from definitions.json, and ways to inspect and break it."""

    channel: AbstractChannel
    definitions: dict[str, Any]

    @property
    def queues(self) -> list[str]:
        return [q["name"] for q in self.definitions["queues"]]

    async def declare(self) -> None:
        """Declare every exchange, queue and binding of the definitions (the gateway never does)."""
        for ex in self.definitions["exchanges"]:
            await self.channel.declare_exchange(
                ex["name"], ex["type"], durable=ex["durable"], auto_delete=ex["auto_delete"]
            )
        for q in self.definitions["queues"]:
            queue = await self.channel.declare_queue(
                q["name"], durable=q["durable"], arguments=q["arguments"]
            )
            await queue.purge()
        for b in self.definitions["bindings"]:
            await self.bind(b["destination"], b["source"], b["routing_key"])

    async def bind(self, queue: str, exchange: str, routing_key: str) -> None:
        declared = await self.channel.declare_queue(queue, passive=True)
        await declared.bind(exchange, routing_key)

    async def unbind(self, queue: str, exchange: str, routing_key: str) -> None:
        declared = await self.channel.declare_queue(queue, passive=True)
        await declared.unbind(exchange, routing_key)

    async def delete_exchange(self, name: str) -> None:
        await self.channel.exchange_delete(name)

    async def restore_exchange(self, name: str) -> None:
        """Re-create an exchange and its bindings as the definitions declare them."""
        (ex,) = [e for e in self.definitions["exchanges"] if e["name"] == name]
        await self.channel.declare_exchange(name, ex["type"], durable=ex["durable"])
        for b in self.definitions["bindings"]:
            if b["source"] == name:
                await self.bind(b["destination"], name, b["routing_key"])

    async def drain(self, queue: str) -> list[AbstractIncomingMessage]:
        """Consume (and ack) everything in a queue right now."""
        declared = await self.channel.declare_queue(queue, passive=True)
        messages = []
        while (message := await declared.get(no_ack=True, fail=False)) is not None:
            messages.append(message)
        return messages

    async def drain_all(self) -> dict[str, list[AbstractIncomingMessage]]:
        return {queue: await self.drain(queue) for queue in self.queues}


@pytest.fixture
async def topology(rabbitmq_url: str) -> AsyncIterator[Topology]:
    """The definitions' topology, declared afresh with empty queues for each test."""
    connection = await aio_pika.connect(rabbitmq_url)
    try:
        topology = Topology(await connection.channel(), json.loads(DEFINITIONS.read_text()))
        await topology.declare()
        yield topology
    finally:
        await connection.close()


async def wait_connected(gateway: Any, timeout: float = 10.0) -> None:
    """Wait until the gateway's broker reports connected (an event, not a sleep loop)."""
    connected = asyncio.Event()
    gateway.broker.add_state_listener(lambda up: connected.set() if up else connected.clear())
    async with asyncio.timeout(timeout):
        await connected.wait()
