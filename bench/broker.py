"""The bench's private vhost on the local RabbitMQ: create, declare, count, purge, delete.

The vhost is made with rabbitmqctl (no management plugin needed) and gets the topology of
deploy/rabbitmq/definitions.json, declared over AMQP, as the broker would load it at boot:
the gateway never declares anything itself.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aio_pika
import aiormq.abc
from aio_pika.abc import AbstractChannel, AbstractRobustConnection

from bench import procs

RABBITMQCTL_TIMEOUT = 60.0


def rabbitmqctl(*args: str) -> str:
    """Run `rabbitmqctl -q ARGS` (bounded in time); its stdout."""
    done = subprocess.run(
        ["rabbitmqctl", "-q", *args],
        check=True,
        capture_output=True,
        text=True,
        timeout=RABBITMQCTL_TIMEOUT,
    )
    return done.stdout.strip()


def rabbitmq_version() -> str:
    try:
        return rabbitmqctl("version").splitlines()[-1]
    except (subprocess.SubprocessError, OSError, IndexError):
        return "unknown"


def broker_pid(port: int) -> int | None:
    """The RabbitMQ node's pid: the beam.smp that listens on the AMQP port."""
    return procs.listening_pid(port, procs.pids_named("beam.smp"))


@dataclass
class Vhost:
    """A private vhost with the definitions' topology, and an AMQP channel to inspect it."""

    host: str
    port: int
    user: str
    password: str
    definitions: dict[str, Any]
    name: str = field(default_factory=lambda: f"task-gateway-bench-{uuid.uuid4().hex[:8]}")
    connection: AbstractRobustConnection | None = None
    channel: AbstractChannel | None = None

    @property
    def url(self) -> str:
        vhost = quote(self.name, safe="")
        return f"amqp://{self.user}:{self.password}@{self.host}:{self.port}/{vhost}"

    @property
    def queues(self) -> list[str]:
        return [q["name"] for q in self.definitions["queues"]]

    @classmethod
    def from_definitions(cls, path: Path, host: str, port: int, user: str, password: str) -> Vhost:
        return cls(host, port, user, password, json.loads(path.read_text()))

    async def create(self) -> None:
        """add_vhost + set_permissions, then declare every exchange, queue and binding."""
        if shutil.which("rabbitmqctl") is None:
            raise RuntimeError("rabbitmqctl is not on PATH: it creates the bench vhost")
        await asyncio.to_thread(rabbitmqctl, "add_vhost", self.name)
        await asyncio.to_thread(
            rabbitmqctl, "set_permissions", "-p", self.name, self.user, ".*", ".*", ".*"
        )
        async with asyncio.timeout(30):
            self.connection = await aio_pika.connect_robust(self.url)
            self.channel = await self.connection.channel()
            for ex in self.definitions["exchanges"]:
                await self.channel.declare_exchange(
                    ex["name"], ex["type"], durable=ex["durable"], auto_delete=ex["auto_delete"]
                )
            for q in self.definitions["queues"]:
                await self.channel.declare_queue(
                    q["name"], durable=q["durable"], arguments=q["arguments"]
                )
            for b in self.definitions["bindings"]:
                queue = await self.channel.declare_queue(b["destination"], passive=True)
                await queue.bind(b["source"], b["routing_key"])

    async def delete(self) -> None:
        """Close our connection and delete the vhost (with everything in it)."""
        if self.connection is not None:
            try:
                async with asyncio.timeout(10):
                    await self.connection.close()
            except Exception:  # best effort on the way out
                pass
        await asyncio.to_thread(
            subprocess.run,
            ["rabbitmqctl", "-q", "delete_vhost", self.name],
            capture_output=True,
            timeout=RABBITMQCTL_TIMEOUT,
        )

    async def _amqp(self) -> aiormq.abc.AbstractChannel:
        # aio-pika's channel caches declared queues (and their first DeclareOk): a passive
        # declare through it would return a stale count, so ask on the underlying channel.
        assert self.channel is not None
        return await self.channel.get_underlay_channel()

    async def counts(self) -> dict[str, int]:
        """Messages in each queue now (passive queue.declare: nobody consumes in the bench)."""
        channel = await self._amqp()
        result = {}
        async with asyncio.timeout(10):
            for name in self.queues:
                declared = await channel.queue_declare(name, passive=True)
                result[name] = int(declared.message_count or 0)
        return result

    async def total(self) -> int:
        return sum((await self.counts()).values())

    async def purge(self) -> None:
        channel = await self._amqp()
        async with asyncio.timeout(30):
            for name in self.queues:
                await channel.queue_purge(name)

    async def settle(self, timeout: float = 10.0, quiet: float = 0.6) -> int:
        """Total messages once the count stopped moving for `quiet` seconds (or at timeout).

        After a load generator exits, publishes it left in flight may still be confirmed for a
        few milliseconds; counting at once would miss them.
        """
        deadline = time.monotonic() + timeout
        last = await self.total()
        stable_since = time.monotonic()
        while time.monotonic() < deadline:
            await asyncio.sleep(0.15)
            now = await self.total()
            if now != last:
                last, stable_since = now, time.monotonic()
            elif time.monotonic() - stable_since >= quiet:
                break
        return last
