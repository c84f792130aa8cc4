"""The reference: raw aio-pika publishing the legacy task message, no gateway in between.

Modelled on shared/baselines/raw_aiopika.py (kept here so the bench does not depend on
../shared): one connection, one channel with publisher confirms, persistent + mandatory
messages, and each of N concurrent workers awaits its own confirm before publishing again, as
a gateway with N requests in flight would.

`message="gateway"` publishes the message the gateway publishes (the README: type, timestamp,
app_id and a task_key header besides the baselines' three properties), so that both rows ask
the same work of RabbitMQ; `"minimal"` publishes the baselines' message (content type,
message id, persistent), which costs the broker less.

Driven by bench/pydriver.py (`--target amqp`), which supplies the closed loop (N in flight)
and the open loop (fixed rate) and the measurements.
"""

from __future__ import annotations

from typing import Any, Literal

import aio_pika
from aio_pika.abc import AbstractExchange, AbstractRobustConnection

from bench.payloads import amqp_task


class RawPublisher:
    """Publishes one legacy task per call() and returns once the broker confirmed it."""

    def __init__(
        self,
        url: str,
        exchange: str,
        routing_key: str,
        request: dict[str, Any],
        message: Literal["gateway", "minimal"] = "gateway",
        service_name: str = "image-generation",
    ) -> None:
        self.url = url
        self.message = message
        self.service_name = service_name
        self.exchange_name = exchange
        self.routing_key = routing_key
        self.request = request
        self.connection: AbstractRobustConnection | None = None
        self.exchange: AbstractExchange | None = None

    async def open(self) -> None:
        self.connection = await aio_pika.connect_robust(self.url)
        channel = await self.connection.channel(publisher_confirms=True)
        self.exchange = await channel.get_exchange(self.exchange_name, ensure=True)

    async def call(self) -> str | None:
        """Publish and await the confirm; None on success, else what went wrong."""
        assert self.exchange is not None
        task_id, body, properties = amqp_task(
            self.request, self.service_name, gateway=self.message == "gateway"
        )
        message = aio_pika.Message(
            body,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            content_type="application/json",
            message_id=task_id,
            **properties,
        )
        try:
            await self.exchange.publish(message, routing_key=self.routing_key, mandatory=True)
        except Exception as exc:  # a nack or a return is a failed call, not a crash
            return type(exc).__name__
        return None

    async def close(self) -> None:
        if self.connection is not None:
            await self.connection.close()
