"""An in-memory broker that routes like RabbitMQ does, from the same definitions.json.

The embedded default for `make run` on a machine with no RabbitMQ, and a fast stand-in in
unit tests. It reproduces what the gateway depends on: a missing exchange, an unroutable
mandatory message, direct/fanout/topic routing, exchange-to-exchange bindings and a queue's
`x-max-length` with `overflow: reject-publish` (a nack). Every message it queues is logged
with its body so that a person can see what their requests produced.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from gateway.broker import metrics
from gateway.broker.base import Broker, Envelope
from gateway.errors import Code, ConfigError, GatewayError, exchange_not_found, unroutable

__all__ = ["Definitions", "MemoryBroker"]

log = structlog.get_logger(logger_name="gateway.broker.memory")

_EXCHANGE_TYPES = frozenset({"direct", "fanout", "topic"})


@dataclass(frozen=True)
class Binding:
    source: str
    destination: str
    destination_type: str  # "queue" or "exchange"
    routing_key: str


@dataclass
class Queue:
    name: str
    max_length: int | None = None
    reject_publish: bool = False
    messages: deque[Envelope] = field(default_factory=deque)


@dataclass(frozen=True)
class Definitions:
    """The parts of a RabbitMQ definitions file that decide routing."""

    exchanges: dict[str, str]  # name -> type
    queues: dict[str, tuple[int | None, bool]]  # name -> (x-max-length, reject-publish)
    bindings: tuple[Binding, ...]

    @classmethod
    def load(cls, path: Path, vhost: str = "/") -> Definitions:
        """Read a definitions file, keeping the objects of one vhost."""
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"broker.definitions: cannot read {path}: {exc.strerror}") from exc
        except json.JSONDecodeError as exc:
            raise ConfigError(f"broker.definitions: {path} is not valid JSON: {exc}") from exc
        return cls.parse(raw, vhost, str(path))

    @classmethod
    def parse(cls, raw: Any, vhost: str = "/", source: str = "definitions") -> Definitions:
        def entries(kind: str) -> Iterable[dict[str, Any]]:
            for index, entry in enumerate(raw.get(kind, [])):
                if not isinstance(entry, dict):
                    raise ConfigError(f"{source}: {kind}[{index}] is not an object")
                if entry.get("vhost", "/") == vhost:
                    yield entry

        exchanges: dict[str, str] = {}
        for entry in entries("exchanges"):
            kind = entry.get("type", "direct")
            if kind not in _EXCHANGE_TYPES:
                raise ConfigError(
                    f"{source}: exchange {entry.get('name')!r} has type {kind!r}; "
                    f"the in-memory broker routes {', '.join(sorted(_EXCHANGE_TYPES))}"
                )
            exchanges[entry["name"]] = kind
        queues: dict[str, tuple[int | None, bool]] = {}
        for entry in entries("queues"):
            arguments = entry.get("arguments") or {}
            queues[entry["name"]] = (
                arguments.get("x-max-length"),
                arguments.get("x-overflow") == "reject-publish",
            )
        bindings = tuple(
            Binding(
                source=entry["source"],
                destination=entry["destination"],
                destination_type=entry.get("destination_type", "queue"),
                routing_key=entry.get("routing_key", ""),
            )
            for entry in entries("bindings")
        )
        return cls(exchanges, queues, bindings)


class MemoryBroker(Broker):
    description = "in-memory broker (messages are kept in this process and lost when it stops)"

    def __init__(self, definitions: Definitions) -> None:
        super().__init__()
        self.exchanges = dict(definitions.exchanges)
        self.queues = {
            name: Queue(name, max_length, reject)
            for name, (max_length, reject) in definitions.queues.items()
        }
        self.bindings = list(definitions.bindings)

    async def start(self) -> None:
        self._set_connected(True)

    async def close(self) -> None:
        self._set_connected(False)

    async def exchange_exists(self, exchange: str) -> bool:
        if not self.connected:
            raise GatewayError(Code.UNAVAILABLE, "the in-memory broker is closed")
        return exchange in self.exchanges

    async def publish(self, envelope: Envelope) -> None:
        if not self.connected:
            raise GatewayError(Code.UNAVAILABLE, "the in-memory broker is closed")
        await asyncio.sleep(0)  # a confirm is never synchronous with the publish
        if envelope.exchange not in self.exchanges:
            raise exchange_not_found(envelope.exchange, envelope.routing_key)
        queues = self._route(envelope.exchange, envelope.routing_key, set())
        if not queues:
            metrics.published(envelope.exchange, "returned", 0.0)
            raise unroutable(envelope.exchange, envelope.routing_key)
        full = [
            q.name
            for q in queues
            if q.reject_publish and q.max_length is not None and len(q.messages) >= q.max_length
        ]
        for queue in queues:
            if queue.name in full:
                continue
            queue.messages.append(envelope)
            if queue.max_length is not None and len(queue.messages) > queue.max_length:
                queue.messages.popleft()  # RabbitMQ's default overflow: drop-head
            log.info(
                "message queued (in-memory broker)",
                queue=queue.name,
                exchange=envelope.exchange,
                routing_key=envelope.routing_key,
                body=envelope.body.decode(),
            )
        metrics.published(envelope.exchange, "nack" if full else "ack", 0.0)
        if full:
            # As RabbitMQ does: the message stays in the queues that took it, and the publisher
            # gets a nack because one refused it.
            raise GatewayError(
                Code.UNAVAILABLE,
                f"the broker nacked the message: queue {full[0]!r} is full and refused it, "
                "and it may be stored in others, so the outcome is unknown; retry with the same "
                "idempotency_key to avoid a duplicate",
            )

    def messages(self, queue: str) -> list[Envelope]:
        """The messages waiting in a queue, oldest first."""
        return list(self.queues[queue].messages)

    def _route(self, exchange: str, routing_key: str, seen: set[str]) -> list[Queue]:
        seen.add(exchange)
        kind = self.exchanges[exchange]
        found: list[Queue] = []
        for binding in self.bindings:
            if binding.source != exchange or not _matches(kind, binding.routing_key, routing_key):
                continue
            if binding.destination_type == "queue":
                queue = self.queues.get(binding.destination)
                if queue is not None and queue not in found:
                    found.append(queue)
            elif binding.destination in self.exchanges and binding.destination not in seen:
                for queue in self._route(binding.destination, routing_key, seen):
                    if queue not in found:
                        found.append(queue)
        return found


def _matches(kind: str, pattern: str, routing_key: str) -> bool:
    if kind == "fanout":
        return True
    if kind == "direct":
        return pattern == routing_key
    return _topic_matches(pattern.split("."), routing_key.split("."))


def _topic_matches(pattern: list[str], words: list[str]) -> bool:
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(_topic_matches(rest, words[i:]) for i in range(len(words) + 1))
    if not words:
        return False
    return (head in ("*", words[0])) and _topic_matches(rest, words[1:])
