"""RabbitMQ through aio-pika: the only module that speaks AMQP.

- One long-lived connection, supervised here rather than by aio-pika's robust connection:
  while it is down, publishes fail at once with UNAVAILABLE instead of waiting for a
  reconnect, and the supervisor reconnects with backoff, rotating through the configured
  addresses.
- One publishing channel per exchange, with confirms and returns raised. A publish to an
  exchange deleted at run time makes the broker close the channel it travelled on (AMQP has
  no softer answer); with a channel per exchange that takes down only publishes to the same
  missing exchange, never the requests in flight to healthy ones.
- Exchanges are checked with a passive declare, once, on a short-lived channel of their own
  (a failed passive declare closes its channel too), and re-checked after a reconnect or a
  publish that found the exchange gone.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar, cast

import aio_pika
import aiormq
import structlog
from aio_pika import Exchange
from aio_pika.abc import AbstractChannel, AbstractConnection
from yarl import URL

from gateway.broker.base import Broker, Envelope
from gateway.errors import Code, GatewayError, exchange_not_found, unroutable

__all__ = ["RabbitBroker", "redact"]

log = structlog.get_logger("gateway.broker.rabbit")

_FIRST_BACKOFF_SECONDS = 0.1

_T = TypeVar("_T")


def redact(url: str) -> str:
    """The URL without its password, for logs and messages."""
    parsed = URL(url)
    return str(parsed.with_password("***")) if parsed.password else url


class RabbitBroker(Broker):
    def __init__(
        self,
        urls: Sequence[str],
        *,
        heartbeat_seconds: int,
        connect_timeout_seconds: float,
        reconnect_max_backoff_seconds: float,
        connection_name: str = "task-gateway",
    ) -> None:
        super().__init__()
        if not urls:
            raise ValueError("RabbitBroker needs at least one AMQP URL")
        self._urls = tuple(urls)
        self.description = "RabbitMQ at " + ", ".join(redact(url) for url in self._urls)
        self._heartbeat = heartbeat_seconds
        self._connect_timeout = connect_timeout_seconds
        self._max_backoff = reconnect_max_backoff_seconds
        self._connection_name = connection_name
        self._connection: AbstractConnection | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._closing = False
        # Per-connection state, dropped when the connection goes.
        self._publishers: dict[str, asyncio.Future[Exchange]] = {}
        self._checked: set[str] = set()
        self._checks: dict[str, asyncio.Future[None]] = {}

    async def start(self) -> None:
        self._supervisor = asyncio.create_task(self._supervise(), name="rabbitmq-supervisor")

    async def close(self) -> None:
        self._closing = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        connection, self._connection = self._connection, None
        self._forget_connection_state()
        if connection is not None and not connection.is_closed:
            await connection.close()
        self._set_connected(False)

    async def publish(self, envelope: Envelope) -> None:
        connection = self._connection
        if connection is None or connection.is_closed:
            raise GatewayError(
                Code.UNAVAILABLE,
                f"not connected to {self.description}; reconnecting, retry shortly",
            )
        if _is_blocked(connection):
            raise GatewayError(
                Code.RESOURCE_EXHAUSTED,
                "RabbitMQ is blocking publishers (a memory or disk alarm); retry later",
            )
        await self._check_exchange(connection, envelope.exchange, envelope.routing_key)
        exchange = await self._publisher(connection, envelope.exchange)
        message = aio_pika.Message(
            envelope.body,
            content_type=envelope.content_type,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=envelope.message_id,
            type=envelope.type,
            timestamp=envelope.timestamp,
            app_id=envelope.app_id,
            headers=dict(envelope.headers),
        )
        try:
            await exchange.publish(message, envelope.routing_key, mandatory=True)
        except aiormq.exceptions.PublishError:
            raise unroutable(envelope.exchange, envelope.routing_key) from None
        except aiormq.exceptions.DeliveryError as exc:
            raise GatewayError(
                Code.UNAVAILABLE,
                f"RabbitMQ nacked the message to exchange {envelope.exchange!r} "
                f"({_frame_name(exc.frame)}); it was not stored, retry later",
            ) from None
        except aiormq.exceptions.ChannelNotFoundEntity:
            self._checked.discard(envelope.exchange)
            raise exchange_not_found(envelope.exchange, envelope.routing_key) from None
        except (
            aiormq.exceptions.AMQPError,
            aiormq.exceptions.ChannelInvalidStateError,
            ConnectionError,
        ) as exc:
            raise GatewayError(
                Code.UNAVAILABLE,
                f"lost the channel to RabbitMQ before the confirm ({type(exc).__name__}): the "
                "outcome is unknown; retry with the same idempotency_key to avoid a duplicate",
            ) from None

    async def _supervise(self) -> None:
        backoff = _FIRST_BACKOFF_SECONDS
        attempt = 0
        while not self._closing:
            url = self._urls[attempt % len(self._urls)]
            attempt += 1
            try:
                connection = await aio_pika.connect(
                    url,
                    timeout=self._connect_timeout,
                    heartbeat=self._heartbeat,
                    client_properties={"connection_name": self._connection_name},
                )
            except (OSError, TimeoutError, aiormq.exceptions.AMQPError) as exc:
                log.warning(
                    "cannot connect to RabbitMQ",
                    url=redact(url),
                    error=str(exc) or type(exc).__name__,
                    retry_in_seconds=backoff,
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff)
                continue
            backoff = _FIRST_BACKOFF_SECONDS
            lost = asyncio.Event()
            connection.close_callbacks.add(lambda _sender, _exc, lost=lost: lost.set())
            self._connection = connection
            self._set_connected(True)
            log.info("connected to RabbitMQ", url=redact(url))
            await lost.wait()
            self._connection = None
            self._forget_connection_state()
            self._set_connected(False)
            if not self._closing:
                log.warning("lost the connection to RabbitMQ; reconnecting", url=redact(url))

    def _forget_connection_state(self) -> None:
        self._publishers.clear()
        self._checked.clear()
        self._checks.clear()

    async def _check_exchange(
        self, connection: AbstractConnection, exchange: str, routing_key: str
    ) -> None:
        """Passive-declare the exchange once; concurrent first requests share one check."""
        if exchange in self._checked:
            return
        check = self._checks.get(exchange)
        if check is None:
            check = _background(self._passive_declare(connection, exchange))
            self._checks[exchange] = check
            check.add_done_callback(
                lambda done: (
                    self._checks.pop(exchange) if self._checks.get(exchange) is done else None
                )
            )
        try:
            await asyncio.shield(check)
        except aiormq.exceptions.ChannelNotFoundEntity:
            raise exchange_not_found(exchange, routing_key) from None
        except (
            aiormq.exceptions.AMQPError,
            aiormq.exceptions.ChannelInvalidStateError,
            ConnectionError,
        ) as exc:
            raise GatewayError(
                Code.UNAVAILABLE,
                f"could not check exchange {exchange!r} on RabbitMQ ({type(exc).__name__}); "
                "retry shortly",
            ) from None

    async def _passive_declare(self, connection: AbstractConnection, exchange: str) -> None:
        channel = await connection.channel(publisher_confirms=False)
        try:
            await channel.declare_exchange(exchange, passive=True)
        finally:
            if not channel.is_closed:
                await channel.close()
        if connection is self._connection:
            self._checked.add(exchange)

    async def _publisher(self, connection: AbstractConnection, exchange: str) -> Exchange:
        """The exchange on its own confirm channel, opened on first use and after a close."""
        opening = self._publishers.get(exchange)
        if (
            opening is not None
            and opening.done()
            and (opening.exception() is not None or opening.result().channel.is_closed)
        ):
            opening = None
        if opening is None:
            opening = _background(self._open_publisher(connection, exchange))
            self._publishers[exchange] = opening
        try:
            return await asyncio.shield(opening)
        except (
            aiormq.exceptions.AMQPError,
            aiormq.exceptions.ChannelInvalidStateError,
            ConnectionError,
        ) as exc:
            raise GatewayError(
                Code.UNAVAILABLE,
                f"could not open a channel to RabbitMQ ({type(exc).__name__}); retry shortly",
            ) from None

    @staticmethod
    async def _open_publisher(connection: AbstractConnection, exchange: str) -> Exchange:
        channel: AbstractChannel = await connection.channel(
            publisher_confirms=True, on_return_raises=True
        )
        return cast(Exchange, await channel.get_exchange(exchange, ensure=False))


def _background(work: Coroutine[Any, Any, _T]) -> asyncio.Future[_T]:
    """A task shared by several waiters, its error read even when every waiter has gone."""
    task = asyncio.ensure_future(work)
    task.add_done_callback(lambda done: done.cancelled() or done.exception())
    return task


def _is_blocked(connection: AbstractConnection) -> bool:
    """Whether RabbitMQ sent connection.blocked (memory or disk alarm) and not yet unblocked.

    aiormq tracks this only in a private event and silently holds every frame while blocked,
    so publishes would wait for the deadline; reading the event lets them fail fast instead.
    """
    underlay: Any = getattr(connection.transport, "connection", None)
    unblocked = getattr(underlay, "_Connection__connection_unblocked", None)
    return isinstance(unblocked, asyncio.Event) and not unblocked.is_set()


def _frame_name(frame: Any) -> str:
    return type(frame).__name__ if frame is not None else "no frame"
