"""The shared RabbitMQ: rabbitmqctl, a vhost of one's own, and the deploy topology in it.

A vhost is made with rabbitmqctl (no management plugin needed) and gets the topology of
deploy/rabbitmq/definitions.json, declared over AMQP as the broker would load it at boot: the
gateway never declares anything itself.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from yarl import URL

from tests.support import DEFINITIONS, procs

__all__ = [
    "Topology",
    "Vhost",
    "broker_pid",
    "load_definitions",
    "rabbitmqctl",
    "topology_at",
    "version",
]

RABBITMQCTL_TIMEOUT = 60.0


def rabbitmqctl(*args: str) -> str:
    """Run `rabbitmqctl -q ARGS` (bounded in time) on the local node; its stdout."""
    done = subprocess.run(
        ["rabbitmqctl", "-q", *args],
        check=True,
        capture_output=True,
        text=True,
        timeout=RABBITMQCTL_TIMEOUT,
    )
    return done.stdout.strip()


def version() -> str:
    """The local node's RabbitMQ version, or "unknown"."""
    try:
        return rabbitmqctl("version").splitlines()[-1]
    except (subprocess.SubprocessError, OSError, IndexError):
        return "unknown"


def broker_pid(port: int) -> int | None:
    """The RabbitMQ node's pid: the beam.smp that listens on the AMQP port."""
    return procs.listening_pid(port, procs.pids_named("beam.smp"))


@dataclass
class Vhost:
    """A vhost of one's own on the RabbitMQ at `server` (an AMQP URL whose path is ignored)."""

    server: str
    prefix: str = "task-gateway-test"
    name: str = ""
    url: str = field(init=False)

    def __post_init__(self) -> None:
        self.name = self.name or f"{self.prefix}-{uuid.uuid4().hex[:8]}"
        self.url = str(URL(self.server).with_path("/" + quote(self.name, safe=""), encoded=True))

    def create(self) -> None:
        """add_vhost, and every permission in it for the URL's user (raises when it cannot)."""
        if shutil.which("rabbitmqctl") is None:
            raise OSError("rabbitmqctl is not on PATH (it creates the vhost)")
        rabbitmqctl("add_vhost", self.name)
        user = URL(self.server).user or "guest"
        rabbitmqctl("set_permissions", "-p", self.name, user, ".*", ".*", ".*")

    def delete(self) -> None:
        """delete_vhost, with everything in it (best effort: on the way out)."""
        subprocess.run(
            ["rabbitmqctl", "-q", "delete_vhost", self.name],
            capture_output=True,
            timeout=RABBITMQCTL_TIMEOUT,
        )


@dataclass
class Topology:
    """The exchanges, queues and bindings of a definitions file, seen through one channel."""

    channel: AbstractChannel
    definitions: dict[str, Any]

    @property
    def queues(self) -> list[str]:
        return [q["name"] for q in self.definitions["queues"]]

    async def declare(self) -> None:
        """Declare every exchange (with its bindings) and queue; empty the queues."""
        for q in self.definitions["queues"]:
            queue = await self.channel.declare_queue(
                q["name"], durable=q["durable"], arguments=q["arguments"]
            )
            await queue.purge()
        for ex in self.definitions["exchanges"]:
            await self.declare_exchange(ex["name"])

    async def declare_exchange(self, name: str) -> None:
        """(Re-)create an exchange and its queue bindings as the definitions declare them."""
        (spec,) = [e for e in self.definitions["exchanges"] if e["name"] == name]
        exchange = await self.channel.declare_exchange(
            name,
            spec["type"],
            durable=spec["durable"],
            auto_delete=spec["auto_delete"],
            internal=spec.get("internal", False),
            arguments=spec.get("arguments") or None,
        )
        for b in self.definitions["bindings"]:
            if b["source"] == name and b.get("destination_type", "queue") == "queue":
                queue = await self.channel.declare_queue(b["destination"], passive=True)
                await queue.bind(exchange, b["routing_key"], arguments=b.get("arguments") or None)

    async def bind(self, queue: str, exchange: str, routing_key: str) -> None:
        declared = await self.channel.declare_queue(queue, passive=True)
        await declared.bind(exchange, routing_key)

    async def unbind(self, queue: str, exchange: str, routing_key: str) -> None:
        declared = await self.channel.declare_queue(queue, passive=True)
        await declared.unbind(exchange, routing_key)

    async def delete_exchange(self, name: str) -> None:
        await self.channel.exchange_delete(name)

    async def counts(self) -> dict[str, int]:
        """Messages in each queue now (passive queue.declare)."""
        # aio-pika's channel caches declared queues (and their first DeclareOk): a passive
        # declare through it could return a stale count, so ask on the underlying channel.
        channel = await self.channel.get_underlay_channel()
        counts = {}
        for name in self.queues:
            declared = await channel.queue_declare(name, passive=True)
            counts[name] = int(declared.message_count or 0)
        return counts

    async def settle(self, timeout: float = 10.0, quiet: float = 0.6) -> int:
        """Messages in all the queues once the count stopped moving for `quiet` seconds (or
        at `timeout`): a client that just stopped may have publishes still being confirmed."""
        async with asyncio.timeout(timeout + 10):  # a broker that stopped answering
            deadline = time.monotonic() + timeout
            last = sum((await self.counts()).values())
            stable_since = time.monotonic()
            while time.monotonic() < deadline:
                await asyncio.sleep(0.15)
                now = sum((await self.counts()).values())
                if now != last:
                    last, stable_since = now, time.monotonic()
                elif time.monotonic() - stable_since >= quiet:
                    break
            return last

    async def purge(self) -> None:
        channel = await self.channel.get_underlay_channel()
        for name in self.queues:
            await channel.queue_purge(name)

    async def drain(self, queue: str) -> list[AbstractIncomingMessage]:
        """Consume (and ack) everything in a queue right now."""
        declared = await self.channel.declare_queue(queue, passive=True)
        messages = []
        while (message := await declared.get(no_ack=True, fail=False)) is not None:
            messages.append(message)
        return messages

    async def drain_all(self) -> dict[str, list[AbstractIncomingMessage]]:
        return {queue: await self.drain(queue) for queue in self.queues}


def load_definitions(path: Path = DEFINITIONS) -> dict[str, Any]:
    """A RabbitMQ definitions file (deploy/rabbitmq/definitions.json by default)."""
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


@asynccontextmanager
async def topology_at(url: str, definitions: Path = DEFINITIONS) -> AsyncIterator[Topology]:
    """A Topology on a connection of its own to `url`, closed on the way out."""
    connection = await aio_pika.connect(url)
    try:
        yield Topology(await connection.channel(), load_definitions(definitions))
    finally:
        await connection.close()
