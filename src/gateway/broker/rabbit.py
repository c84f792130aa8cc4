"""RabbitMQ through aio-pika: the only module that speaks AMQP.

- A control connection, supervised here rather than by aio-pika's robust connection: it is
  what `connected` reports (health, readiness), and it carries readiness's passive exchange
  checks. The supervisor reconnects with backoff, rotating through the configured addresses;
  an unexpected error in it is logged and it starts again, so it can never die silently.
- A publishing *lane* per exchange: a connection of its own with one confirm channel,
  returns raised, opened on the first publish to the exchange after a passive declare on
  that same connection (so the exchange is checked again whenever the lane is reopened, after
  a reconnect). A lane lives as long as its own connection: losing the control connection,
  or another exchange's lane, fails no publish on it. While there is neither an open lane
  nor a control connection the broker is away, and a publish fails at once with UNAVAILABLE
  rather than waiting for a connection attempt.
  Why a connection per exchange: a publish to an exchange deleted at run time makes the
  broker close the channel it travelled on, and aiormq may then still write publishes that
  were waiting behind its channel lock after the Channel.CloseOk, which the broker answers by
  closing the whole connection (504 "expected 'channel.open'"). With a connection per
  exchange that only ever hurts publishes to the exchange that is gone.
- A missing exchange is remembered for a second, so that a burst of publishes to it, or of
  readiness probes, does not open a channel each.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import aio_pika
import aiormq
import aiormq.abc
import structlog
from aio_pika.abc import AbstractConnection
from yarl import URL

from gateway.broker import metrics
from gateway.broker.base import Broker, Envelope
from gateway.errors import Code, GatewayError, exchange_not_found, unroutable

__all__ = ["RabbitBroker", "redact"]

log = structlog.get_logger(logger_name="gateway.broker.rabbit")

_FIRST_BACKOFF_SECONDS = 0.1

# What aiormq raises when a channel or connection goes away under a publish or a declare.
_LOST = (
    aiormq.exceptions.AMQPError,
    aiormq.exceptions.ChannelInvalidStateError,
    ConnectionError,
    RuntimeError,  # aiormq: "<Connection> closed" when opening a channel on a closing connection
)

_T = TypeVar("_T")


def redact(url: str) -> str:
    """The URL without its password, for logs and messages."""
    parsed = URL(url)
    return str(parsed.with_password("***")) if parsed.password else url


@dataclass
class _Lane:
    """An exchange's own connection and confirm channel."""

    connection: AbstractConnection
    # aiormq's own channel: aio-pika's wrapper has no way to publish without waiting for the
    # frame to be flushed (see publish).
    channel: aiormq.Channel
    # Publishes written or about to be written on the channel and not yet settled.
    publishing: int = 0
    # How many were in flight when the broker closed the channel for a missing exchange.
    in_flight_at_close: int | None = None

    @property
    def usable(self) -> bool:
        return (
            not self.connection.is_closed
            and not self.channel.is_closed
            and _close_reason(self.channel) is None
        )


class RabbitBroker(Broker):
    def __init__(
        self,
        urls: Sequence[str],
        *,
        heartbeat_seconds: int,
        connect_timeout_seconds: float,
        reconnect_max_backoff_seconds: float,
        missing_exchange_seconds: float = 1.0,
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
        # How long an exchange found missing counts as missing without asking the broker again.
        self._missing_for = missing_exchange_seconds
        self._connection_name = connection_name
        self._connection: AbstractConnection | None = None
        self._url = self._urls[0]  # the address the control connection reached
        self._url_reached = False  # whether it ever connected: later connections are reconnects
        self._supervisor: asyncio.Task[None] | None = None
        self._closing = False
        # Each exchange's lane, open or opening; it outlives the control connection.
        self._lanes: dict[str, asyncio.Future[_Lane]] = {}
        # Readiness's checks on the control connection, dropped when it goes.
        self._checked: set[str] = set()
        self._checks: dict[str, asyncio.Future[None]] = {}
        # Exchanges found missing, until when (loop time) they count as missing.
        self._missing: dict[str, float] = {}
        # Connections being closed in the background: referenced until done.
        self._background: set[asyncio.Future[Any]] = set()

    async def start(self) -> None:
        self._start_supervisor()

    async def close(self) -> None:
        self._closing = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        connections = [lane.connection for lane in self._open_lanes()]
        self._lanes.clear()
        control, self._connection = self._connection, None
        if control is not None:
            connections.append(control)
        for connection in connections:
            if not connection.is_closed:
                with contextlib.suppress(*_LOST, OSError):
                    await connection.close()
        await asyncio.gather(*self._background, return_exceptions=True)
        self._set_connected(False)

    async def exchange_exists(self, exchange: str) -> bool:
        if self._is_missing(exchange):
            return False
        lane = _opened(self._lanes.get(exchange))
        if lane is not None and lane.usable:
            return True  # checked when the lane opened, on the lane's own connection
        try:
            await self._check_exchange(self._control(), exchange, "")
        except GatewayError as error:
            if error.code is Code.FAILED_PRECONDITION:
                return False
            raise
        return True

    async def publish(self, envelope: Envelope) -> None:
        if self._is_missing(envelope.exchange):
            raise exchange_not_found(envelope.exchange, envelope.routing_key)
        lane = await self._lane(envelope.exchange, envelope.routing_key)
        if _is_blocked(lane.connection):
            raise GatewayError(
                Code.RESOURCE_EXHAUSTED,
                "RabbitMQ is blocking publishers (a memory or disk alarm); retry later",
            )
        # The frame's properties, built directly: an aio_pika.Message per request would only
        # be a detour to the same object.
        properties = aiormq.spec.Basic.Properties(
            content_type=envelope.content_type,
            delivery_mode=int(aio_pika.DeliveryMode.PERSISTENT),
            message_id=envelope.message_id,
            message_type=envelope.type,
            timestamp=envelope.timestamp,
            app_id=envelope.app_id,
            headers=dict(envelope.headers),
        )
        lane.publishing += 1
        sent = time.perf_counter()
        outcome = "lost"
        try:
            await lane.channel.basic_publish(
                envelope.body,
                exchange=envelope.exchange,
                routing_key=envelope.routing_key,
                properties=properties,
                mandatory=True,
                # Do not hold aiormq's channel lock until the frame is flushed to the socket:
                # that serialises every publish of the lane behind one event-loop turn each.
                # The confirm is awaited all the same.
                wait=False,
            )
            outcome = "ack"
        except aiormq.exceptions.PublishError:
            outcome = "returned"
            raise unroutable(envelope.exchange, envelope.routing_key) from None
        except aiormq.exceptions.DeliveryError as exc:
            outcome = "nack"
            # RabbitMQ nacks a message that one of the queues it routes to refused (a full
            # reject-publish queue, a quorum queue without a majority) and keeps it in the
            # others: whether a consumer will see it is unknown.
            raise GatewayError(
                Code.UNAVAILABLE,
                f"RabbitMQ nacked the message to exchange {envelope.exchange!r} "
                f"({_frame_name(exc.frame)}): a queue it routes to refused it, and it may be "
                "stored in others, so the outcome is unknown; retry with the same "
                "idempotency_key to avoid a duplicate",
            ) from None
        except _LOST as exc:
            if isinstance(exc, aiormq.exceptions.ChannelNotFoundEntity) or isinstance(
                _close_reason(lane.channel), aiormq.exceptions.ChannelNotFoundEntity
            ):
                raise self._exchange_gone(lane, envelope) from None
            raise GatewayError(
                Code.UNAVAILABLE,
                f"lost the channel to RabbitMQ before the confirm ({type(exc).__name__}): the "
                "outcome is unknown; retry with the same idempotency_key to avoid a duplicate",
            ) from None
        finally:
            lane.publishing -= 1
            metrics.PUBLISH_SECONDS.labels(envelope.exchange).observe(time.perf_counter() - sent)
            metrics.OUTCOMES.labels(envelope.exchange, outcome).inc()

    def _exchange_gone(self, lane: _Lane, envelope: Envelope) -> GatewayError:
        """The error for a publish on a channel the broker closed for a missing exchange.

        The broker closes the channel at the first publish to the missing exchange; publishes
        sent before it may have been stored, and their confirms are lost with the channel. So
        only a publish that was alone in flight is known not to be stored. Every publish in
        flight fails at once, before any of them settles: the first to get here counts them.
        """
        self._checked.discard(envelope.exchange)
        self._mark_missing(envelope.exchange)  # the next publishes fail fast
        if lane.in_flight_at_close is None:
            lane.in_flight_at_close = lane.publishing
        if lane.in_flight_at_close == 1:
            return exchange_not_found(envelope.exchange, envelope.routing_key)
        return GatewayError(
            Code.UNAVAILABLE,
            f"exchange {envelope.exchange!r} (routing key {envelope.routing_key!r}) was deleted "
            "while this task was in flight: the outcome is unknown; retry with the same "
            "idempotency_key (while the exchange is missing the retry gets FAILED_PRECONDITION)",
        )

    def _control(self) -> AbstractConnection:
        """The control connection, or UNAVAILABLE while there is none."""
        connection = self._connection
        if connection is None or connection.is_closed:
            raise GatewayError(
                Code.UNAVAILABLE,
                f"not connected to {self.description}; reconnecting, retry shortly",
            )
        return connection

    async def _connect(self, url: str, purpose: str) -> AbstractConnection:
        return await aio_pika.connect(
            url,
            timeout=self._connect_timeout,
            heartbeat=self._heartbeat,
            client_properties={"connection_name": f"{self._connection_name} {purpose}"},
        )

    def _start_supervisor(self) -> None:
        self._supervisor = asyncio.create_task(self._supervise(), name="rabbitmq-supervisor")
        self._supervisor.add_done_callback(self._supervisor_ended)

    def _supervisor_ended(self, task: asyncio.Task[None]) -> None:
        """Crash-only, but never silent: a supervisor that ends before close() starts again."""
        if self._closing or task.cancelled():
            return
        log.error(
            "the RabbitMQ connection supervisor stopped; starting it again",
            exc_info=task.exception(),
        )
        self._start_supervisor()

    async def _supervise(self) -> None:
        backoff = _FIRST_BACKOFF_SECONDS
        attempt = 0
        connected_before = self._url_reached
        while not self._closing:
            url = self._urls[attempt % len(self._urls)]
            attempt += 1
            try:
                connection = await self._connect(url, "control")
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
            except Exception:
                # A bug, or an error no one foresaw: logged whole, then the same backoff.
                log.exception(
                    "unexpected error connecting to RabbitMQ",
                    url=redact(url),
                    retry_in_seconds=backoff,
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff)
                continue
            backoff = _FIRST_BACKOFF_SECONDS
            if connected_before:
                metrics.RECONNECTS.inc()
            connected_before = True
            lost = asyncio.Event()
            connection.close_callbacks.add(lambda _sender, _exc, lost=lost: lost.set())
            self._url = url
            self._url_reached = True
            self._connection = connection
            self._set_connected(True)
            log.info("connected to RabbitMQ", url=redact(url))
            await lost.wait()
            self._connection = None
            self._checked.clear()
            self._checks.clear()
            self._set_connected(False)
            if not self._closing:
                log.warning("lost the connection to RabbitMQ; reconnecting", url=redact(url))

    def _open_lanes(self) -> list[_Lane]:
        return [lane for lane in map(_opened, self._lanes.values()) if lane is not None]

    def _is_missing(self, exchange: str) -> bool:
        until = self._missing.get(exchange)
        if until is None:
            return False
        if asyncio.get_running_loop().time() < until:
            return True
        del self._missing[exchange]
        return False

    def _mark_missing(self, exchange: str) -> None:
        self._missing[exchange] = asyncio.get_running_loop().time() + self._missing_for

    def _in_background(self, work: Coroutine[Any, Any, Any]) -> None:
        task = _shared(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _check_exchange(
        self, connection: AbstractConnection, exchange: str, routing_key: str
    ) -> None:
        """Passive-declare the exchange once; concurrent first requests share one check."""
        if exchange in self._checked:
            return
        check = self._checks.get(exchange)
        if check is None:
            check = _shared(self._passive_declare(connection, exchange))
            self._checks[exchange] = check
            check.add_done_callback(
                lambda done: (
                    self._checks.pop(exchange) if self._checks.get(exchange) is done else None
                )
            )
        try:
            await asyncio.shield(check)
        except aiormq.exceptions.ChannelNotFoundEntity:
            self._mark_missing(exchange)
            raise exchange_not_found(exchange, routing_key) from None
        except _LOST as exc:
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

    async def _lane(self, exchange: str, routing_key: str) -> _Lane:
        """The exchange's publishing lane, opened on first use and again after it failed."""
        opening = self._lanes.get(exchange)
        if opening is not None and opening.done():
            lane = _opened(opening)
            if lane is not None and lane.usable:  # every publish but the first few: no await
                return lane
            if lane is not None and not lane.connection.is_closed:  # it broke since it opened
                self._in_background(lane.connection.close())
            opening = None
        if opening is None:
            self._control()  # neither a lane nor a control connection: the broker is away
            opening = _shared(self._open_lane(exchange))
            self._lanes[exchange] = opening
        try:
            return await asyncio.shield(opening)
        except aiormq.exceptions.ChannelNotFoundEntity:
            self._mark_missing(exchange)
            raise exchange_not_found(exchange, routing_key) from None
        except (*_LOST, OSError, TimeoutError) as exc:
            raise GatewayError(
                Code.UNAVAILABLE,
                f"could not open a connection to RabbitMQ for exchange {exchange!r} "
                f"({type(exc).__name__}); retry shortly",
            ) from None

    async def _open_lane(self, exchange: str) -> _Lane:
        """A connection for the exchange's publishes, once a passive declare found it there."""
        connection = await self._connect(self._url, f"publisher {exchange}")
        try:
            probe = await connection.channel(publisher_confirms=False)
            try:
                await probe.declare_exchange(exchange, passive=True)
            finally:
                if not probe.is_closed:
                    await probe.close()
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            return _Lane(connection, cast(aiormq.Channel, await channel.get_underlay_channel()))
        except BaseException:
            with contextlib.suppress(*_LOST, OSError):
                await connection.close()
            raise


def _opened(opening: asyncio.Future[_Lane] | None) -> _Lane | None:
    """The lane, if `opening` is done and opened one."""
    if opening is None or not opening.done() or opening.cancelled() or opening.exception():
        return None
    return opening.result()


def _shared(work: Coroutine[Any, Any, _T]) -> asyncio.Future[_T]:
    """A task several callers may await, its error read even when every caller has gone."""
    task = asyncio.ensure_future(work)
    task.add_done_callback(lambda done: done.cancelled() or done.exception())
    return task


def _close_reason(channel: aiormq.abc.AbstractChannel) -> BaseException | None:
    """Why the broker closed a channel; aiormq sets this before the channel reads as closed."""
    reason = getattr(channel, "_close_exception", None)
    return reason if isinstance(reason, BaseException) else None


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
