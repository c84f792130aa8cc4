"""Raw aiormq (aio-pika's lower layer) publishing the gateway's message, no gateway in between.

Modelled on shared/baselines/raw_aiormq.py and on bench/raw_aiopika.py (kept here so the bench
does not depend on ../shared): one connection, one channel with publisher confirms, persistent +
mandatory messages with the gateway's properties (content type, message id, type, timestamp,
app_id, the task_key header), each of N concurrent workers awaiting its own confirm before it
publishes again. Closer to the broker's own limit than aio-pika: no robust-connection layer, no
Message objects. Its CPU per confirmed message is half of the Python floor the gateway's CPU per
task is held to (docs/performance.md, "The targets").

Driven by bench/pydriver.py (`--target amqp --library aiormq`).
"""

from __future__ import annotations

from typing import Any

import aiormq
from aiormq.abc import AbstractChannel, AbstractConnection
from pamqp.commands import Basic

from bench.payloads import amqp_task


class RawAiormqPublisher:
    """Publishes one legacy task per call() and returns once the broker confirmed it."""

    def __init__(
        self,
        url: str,
        exchange: str,
        routing_key: str,
        request: dict[str, Any],
        service_name: str = "image-generation",
    ) -> None:
        self.url = url
        self.exchange = exchange
        self.routing_key = routing_key
        self.request = request
        self.service_name = service_name
        self.connection: AbstractConnection | None = None
        self.channel: AbstractChannel | None = None

    async def open(self) -> None:
        self.connection = await aiormq.connect(self.url)
        # A return (unroutable) fails the publish instead of resolving it with the message.
        self.channel = await self.connection.channel(publisher_confirms=True, on_return_raises=True)

    async def call(self) -> str | None:
        """Publish and await the confirm; None on success, else what went wrong."""
        assert self.channel is not None
        task_id, body, gateway = amqp_task(self.request, self.service_name)
        properties = Basic.Properties(
            delivery_mode=2,
            content_type="application/json",
            message_id=task_id,
            message_type=gateway["type"],
            timestamp=gateway["timestamp"],
            app_id=gateway["app_id"],
            headers=gateway["headers"],
        )
        try:
            confirmation = await self.channel.basic_publish(
                body,
                exchange=self.exchange,
                routing_key=self.routing_key,
                properties=properties,
                mandatory=True,
            )
        except Exception as exc:  # a return or a closed channel is a failed call, not a crash
            return type(exc).__name__
        return None if isinstance(confirmation, Basic.Ack) else type(confirmation).__name__

    async def close(self) -> None:
        if self.connection is not None:
            await self.connection.close()
