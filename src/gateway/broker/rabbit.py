"""RabbitMQ through aio-pika: the only module that speaks AMQP.

- A control connection, supervised here rather than by aio-pika's robust connection: it is
  what `connected` reports (health, readiness), and it carries readiness's passive exchange
  checks. The supervisor reconnects with backoff, rotating through the configured addresses
  (the one after the address it lost comes first); an unexpected error in it is logged and it
  starts again, so it can never die silently.
- A publishing *lane* per exchange: a connection of its own with one confirm channel,
  returns raised, opened on the first publish to the exchange while the control connection is
  up, after a passive declare on that same connection (so the exchange is checked again
  whenever the lane reconnects). A task of the lane's own keeps it connected until close():
  when the lane's connection goes, it reconnects at once to the control connection's node (a
  node known to be up) or, when that is the node it lost or there is no control connection,
  to the next address, rotating through them with backoff as the supervisor does; the
  supervisor cuts a lane's backoff short when it reaches a node. When the broker closed only
  the lane's channel (a missing exchange), it reconnects to the same node. A lane lives as
  long as its own connection: losing the control connection, or another exchange's lane,
  fails no publish on it.
- A publish never waits for a connection to a node that is not known to be up: it goes out on
  the lane's open connection, or waits for the lane's connection attempt when that attempt is
  to the control connection's node (or to the node that just closed the lane's channel), or
  else fails at once with UNAVAILABLE (the broker is away, or the lane is between two
  attempts). Publishes in flight when their connection goes fail with UNAVAILABLE and an
  unknown outcome: the broker may have stored them.
- A lane whose every publish was nacked for a second replaces its channel (see
  `_Link.nacked`: a RabbitMQ 3.10 channel can stay stuck after a failover).
  Why a connection per exchange: a publish to an exchange deleted at run time makes the
  broker close the channel it travelled on, and aiormq may then still write publishes that
  were waiting behind its channel lock after the Channel.CloseOk, which the broker answers by
  closing the whole connection (504 "expected 'channel.open'"). With a connection per
  exchange that only ever hurts publishes to the exchange that is gone.
- A missing exchange is remembered for `missing_exchange_seconds` (a second by default), so
  that a burst of publishes to it, or of readiness probes, does not open a channel each.
  Readiness's finding that an exchange is there is trusted as long, then checked again with a
  passive declare on the control connection, so that an exchange deleted at run time turns
  readiness off (an open lane does not notice it until a publish). Publishes never pay for
  this: a lane's exchange is checked only when the lane connects.
- TLS (amqps:// addresses, `TlsFiles`): the broker's certificate is verified against the CA
  file (or the system's CAs) and its name against the address's host. With a client
  certificate, an address without a password authenticates with RabbitMQ's EXTERNAL mechanism
  (the user is the certificate's); one with a password uses it, over mutual TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import ssl
import time
from collections.abc import Awaitable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import aio_pika
import aiormq
import aiormq.abc
import structlog
from aio_pika.abc import AbstractConnection
from yarl import URL

from gateway.broker import metrics
from gateway.broker.base import Broker, Envelope
from gateway.config import redact
from gateway.errors import Code, ConfigError, GatewayError, exchange_not_found, unroutable

__all__ = ["RabbitBroker", "TlsFiles", "tls_context"]

log = structlog.get_logger(logger_name="gateway.broker.rabbit")

_FIRST_BACKOFF_SECONDS = 0.1
# A channel that got nothing but nacks for this long is replaced (see _Link.nacked).
_STUCK_AFTER_SECONDS = 1.0

# What aiormq raises when a channel or connection goes away under a publish or a declare.
_LOST = (
    aiormq.exceptions.AMQPError,
    aiormq.exceptions.ChannelInvalidStateError,
    ConnectionError,
    RuntimeError,  # aiormq: "<Connection> closed" when opening a channel on a closing connection
)
# What a connection attempt raises for a broker that is away, slow or refuses us.
_UNREACHABLE = (*_LOST, OSError, TimeoutError)

_T = TypeVar("_T")


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for amqps:// addresses: the CA that signed the brokers' certificates (empty:
    the system's CAs), and a client certificate with its key (empty: none)."""

    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""


def tls_context(files: TlsFiles) -> ssl.SSLContext:
    """A client context verifying the broker and presenting the client certificate, if any.

    ConfigError naming the `broker.tls` setting whose file cannot be read or used.
    """
    for setting, path in (
        ("ca_file", files.ca_file),
        ("cert_file", files.cert_file),
        ("key_file", files.key_file),
    ):
        if path:
            try:
                with open(path, "rb"):
                    pass
            except OSError as exc:
                raise ConfigError(
                    f"broker.tls.{setting}: cannot read {path}: {exc.strerror}"
                ) from None
    try:
        # With a CA file, only that CA is trusted; without, the system's.
        context = ssl.create_default_context(cafile=files.ca_file or None)
    except ssl.SSLError as exc:
        raise ConfigError(
            f"broker.tls.ca_file: {files.ca_file} holds no PEM CA certificate ({exc.reason})"
        ) from None
    if files.cert_file:
        try:
            context.load_cert_chain(files.cert_file, files.key_file)
        except ssl.SSLError as exc:
            raise ConfigError(
                f"broker.tls.cert_file, broker.tls.key_file: {files.cert_file} and "
                f"{files.key_file} are not a PEM certificate and its private key ({exc.reason})"
            ) from None
    return context


@dataclass(eq=False)
class _Link:
    """One connection of a lane, with its confirm channel."""

    url: str
    connection: AbstractConnection
    # aiormq's own channel: aio-pika's wrapper has no way to publish without waiting for the
    # frame to be flushed (see publish).
    channel: aiormq.Channel
    # Publishes written or about to be written on the channel and not yet settled.
    publishing: int = 0
    # How many were in flight when the broker closed the channel for a missing exchange.
    in_flight_at_close: int | None = None
    # Since when (loop time) every publish settled was nacked; None after an ack.
    nacked_since: float | None = None
    # Set when the channel should be replaced by a new one (see `nacked`).
    stuck: asyncio.Event = field(default_factory=asyncio.Event)
    # Replaced: the channel closes once its last publish settled.
    retired: bool = False

    @property
    def usable(self) -> bool:
        return (
            not self.connection.is_closed
            and not self.channel.is_closed
            and _close_reason(self.channel) is None
        )

    def acked(self) -> None:
        self.nacked_since = None

    def nacked(self) -> None:
        """Count a nack; a channel that got nothing but nacks for a while is stuck.

        RabbitMQ 3.10 can leave a channel nacking every publish to a quorum queue for good: a
        channel that first publishes to it while its leader's node is down (a failover under
        way) keeps asking that node, and rejects each publish without sending it. A new
        channel asks the new leader. A queue that is really full (reject-publish) nacks on
        the new channel too: then the cost is one channel a second.
        """
        now = asyncio.get_running_loop().time()
        if self.nacked_since is None:
            self.nacked_since = now
        elif now - self.nacked_since >= _STUCK_AFTER_SECONDS:
            self.stuck.set()

    async def lost_or_stuck(self) -> None:
        """Until the channel closes (by itself or with its connection) or is found stuck."""
        stuck = asyncio.ensure_future(self.stuck.wait())
        try:
            await asyncio.wait((self.channel.closing, stuck), return_when=asyncio.FIRST_COMPLETED)
        finally:
            stuck.cancel()


@dataclass(eq=False)
class _Lane:
    """An exchange's publishing lane: its link while it has one, and the task keeping one."""

    exchange: str
    link: _Link | None = None
    # The connection attempt under way, and its address; None between two attempts.
    attempt: asyncio.Future[_Link] | None = None
    target: str = ""
    # Whether the attempt's node is known to be up: publishes wait for it then.
    target_up: bool = False
    # Set by the supervisor when it reached a node: a lane waiting to try again tries now.
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    keeper: asyncio.Task[None] | None = None


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
        tls: TlsFiles | None = None,
    ) -> None:
        """`tls`: for amqps:// addresses; ConfigError when a file of it cannot be used."""
        super().__init__()
        if not urls:
            raise ValueError("RabbitBroker needs at least one AMQP URL")
        self._urls = tuple(urls)
        self.description = "RabbitMQ at " + ", ".join(redact(url) for url in self._urls)
        self._heartbeat = heartbeat_seconds
        self._connect_timeout = connect_timeout_seconds
        self._max_backoff = reconnect_max_backoff_seconds
        # How long an exchange found missing counts as missing, and one readiness found there
        # counts as there, without asking the broker again.
        self._missing_for = missing_exchange_seconds
        self._connection_name = connection_name
        self._ssl_context = tls_context(tls) if tls is not None else None
        # Addresses that log in with the client certificate (EXTERNAL) rather than a password.
        self._external = frozenset(
            url for url in self._urls if tls is not None and tls.cert_file and not URL(url).password
        )
        self._connection: AbstractConnection | None = None
        self._url = self._urls[0]  # the address the control connection reached
        self._url_reached = False  # whether it ever connected: later connections are reconnects
        self._supervisor: asyncio.Task[None] | None = None
        self._closing = False
        # Each exchange's lane; it outlives the control connection.
        self._lanes: dict[str, _Lane] = {}
        # Exchanges readiness found there on the control connection, until when (loop time)
        # they count as there; dropped when the connection goes.
        self._checked: dict[str, float] = {}
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
        lanes = list(self._lanes.values())
        self._lanes.clear()
        tasks: list[asyncio.Future[Any]] = []
        for lane in lanes:
            for task in (lane.keeper, lane.attempt):
                if task is not None:
                    task.cancel()
                    tasks.append(task)
        await asyncio.gather(*tasks, return_exceptions=True)
        connections = [lane.link.connection for lane in lanes if lane.link is not None]
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
        # Not answered from an open lane: the lane checked its exchange when it connected, and
        # the exchange may have been deleted since without the lane noticing.
        if self._is_missing(exchange):
            return False
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
        link = await self._link(envelope.exchange, envelope.routing_key)
        if _is_blocked(link.connection):
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
        link.publishing += 1
        sent = time.perf_counter()
        outcome = "lost"
        try:
            await link.channel.basic_publish(
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
            link.acked()
        except aiormq.exceptions.PublishError:
            outcome = "returned"
            raise unroutable(envelope.exchange, envelope.routing_key) from None
        except aiormq.exceptions.DeliveryError as exc:
            outcome = "nack"
            link.nacked()
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
        except asyncio.CancelledError:
            if not _closed_by_aiormq():
                raise
            raise _lost_in_flight("the connection was closed: no heartbeat from RabbitMQ") from None
        except _LOST as exc:
            if isinstance(exc, aiormq.exceptions.ChannelNotFoundEntity) or isinstance(
                _close_reason(link.channel), aiormq.exceptions.ChannelNotFoundEntity
            ):
                raise self._exchange_gone(link, envelope) from None
            raise _lost_in_flight(type(exc).__name__) from None
        finally:
            link.publishing -= 1
            if link.retired and not link.publishing:
                self._in_background(link.channel.close())
            metrics.published(envelope.exchange, outcome, time.perf_counter() - sent)

    def _exchange_gone(self, link: _Link, envelope: Envelope) -> GatewayError:
        """The error for a publish on a channel the broker closed for a missing exchange.

        The broker closes the channel at the first publish to the missing exchange; publishes
        sent before it may have been stored, and their confirms are lost with the channel. So
        only a publish that was alone in flight is known not to be stored. Every publish in
        flight fails at once, before any of them settles: the first to get here counts them.
        """
        self._checked.pop(envelope.exchange, None)
        self._mark_missing(envelope.exchange)  # the next publishes fail fast
        if link.in_flight_at_close is None:
            link.in_flight_at_close = link.publishing
        if link.in_flight_at_close == 1:
            return exchange_not_found(envelope.exchange, envelope.routing_key)
        return GatewayError(
            Code.UNAVAILABLE,
            f"exchange {envelope.exchange!r} (routing key {envelope.routing_key!r}) was deleted "
            "while this task was in flight: the outcome is unknown; retry with the same "
            "idempotency_key (while the exchange is missing the retry gets FAILED_PRECONDITION)",
        )

    def _control_up(self) -> bool:
        connection = self._connection
        return connection is not None and not connection.is_closed

    def _control(self) -> AbstractConnection:
        """The control connection, or UNAVAILABLE while there is none."""
        if not self._control_up():
            raise self._away()
        assert self._connection is not None
        return self._connection

    def _away(self) -> GatewayError:
        return GatewayError(
            Code.UNAVAILABLE, f"not connected to {self.description}; reconnecting, retry shortly"
        )

    async def _connect(self, url: str, purpose: str) -> AbstractConnection:
        return await _uncancelled(
            aio_pika.connect(
                url,
                timeout=self._connect_timeout,
                heartbeat=self._heartbeat,
                client_properties={"connection_name": f"{self._connection_name} {purpose}"},
                ssl_context=self._ssl_context,
                # aiormq picks the mechanism from the URL's `auth` query parameter, where
                # aio-pika puts its extra keyword arguments (and leaves out a None).
                auth="external" if url in self._external else None,
            )
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
            except Exception as exc:
                if isinstance(exc, _UNREACHABLE):
                    log.warning(
                        "cannot connect to RabbitMQ",
                        url=redact(url),
                        error=str(exc) or type(exc).__name__,
                        retry_in_seconds=backoff,
                    )
                else:  # a bug, or an error no one foresaw: logged whole, then the same backoff
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
            for lane in self._lanes.values():
                lane.wake.set()  # a node is up: lanes waiting to reconnect try it now
            await lost.wait()
            self._connection = None
            self._checked.clear()
            self._checks.clear()
            self._set_connected(False)
            if not self._closing:
                log.warning("lost the connection to RabbitMQ; reconnecting", url=redact(url))

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
        """Passive-declare the exchange, unless it was found there less than
        `missing_exchange_seconds` ago; concurrent requests share one check."""
        if asyncio.get_running_loop().time() < self._checked.get(exchange, 0.0):
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
            raise exchange_not_found(exchange, routing_key) from None
        except _LOST as exc:
            raise GatewayError(
                Code.UNAVAILABLE,
                f"could not check exchange {exchange!r} on RabbitMQ ({type(exc).__name__}); "
                "retry shortly",
            ) from None

    async def _passive_declare(self, connection: AbstractConnection, exchange: str) -> None:
        """Whether the exchange is there, on a channel of its own (a missing exchange closes
        it): ChannelNotFoundEntity, and the exchange marked missing, when it is not."""
        channel = await _uncancelled(connection.channel(publisher_confirms=False))
        try:
            await _uncancelled(channel.declare_exchange(exchange, passive=True))
        except aiormq.exceptions.ChannelNotFoundEntity:
            self._mark_missing(exchange)
            raise
        finally:
            if not channel.is_closed:
                await channel.close()
        if connection is self._connection:  # trusted for a while (see _check_exchange)
            self._checked[exchange] = asyncio.get_running_loop().time() + self._missing_for

    # --- lanes ------------------------------------------------------------------------------

    async def _link(self, exchange: str, routing_key: str) -> _Link:
        """The exchange's open link; or the one being opened to a node known to be up; or an
        error at once."""
        lane = self._lanes.get(exchange)
        if lane is not None and lane.link is not None and lane.link.usable:
            return lane.link  # every publish but the first few after a (re)connect: no await
        if lane is None:
            if not self._control_up():
                raise self._away()  # neither a lane nor a control connection: the broker is away
            lane = self._start_lane(exchange)
        elif lane.attempt is None and lane.link is not None:
            # Its link just broke, and its keeper has not seen it yet: try again now.
            self._attempt(lane, *self._after_loss(lane.link))
        attempt = lane.attempt
        if attempt is None or not lane.target_up:
            raise GatewayError(
                Code.UNAVAILABLE,
                f"no connection to RabbitMQ for exchange {exchange!r} at the moment "
                "(reconnecting); nothing was published, retry shortly",
            )
        try:
            link = await asyncio.shield(attempt)
        except aiormq.exceptions.ChannelNotFoundEntity:
            raise exchange_not_found(exchange, routing_key) from None
        except asyncio.CancelledError:
            if not attempt.cancelled():
                raise  # this publish is being cancelled
            raise self._away() from None  # close() stopped the attempt
        except _UNREACHABLE as exc:
            raise GatewayError(
                Code.UNAVAILABLE,
                f"could not open a connection to RabbitMQ for exchange {exchange!r} "
                f"({type(exc).__name__}); nothing was published, retry shortly",
            ) from None
        if not link.usable:
            raise GatewayError(
                Code.UNAVAILABLE,
                f"the connection to RabbitMQ for exchange {exchange!r} closed as it opened; "
                "nothing was published, retry shortly",
            )
        return link

    def _start_lane(self, exchange: str) -> _Lane:
        """A lane for the exchange, its first attempt to the control connection's node."""
        lane = _Lane(exchange)
        self._attempt(lane, self._url, up=True)
        lane.keeper = asyncio.create_task(
            self._keep_lane(lane),
            name=f"rabbitmq-lane {exchange}",
            context=contextvars.Context(),  # not the first request's: its log fields stay its
        )
        lane.keeper.add_done_callback(lambda task: self._lane_ended(lane, task))
        self._lanes[exchange] = lane
        return lane

    def _attempt(self, lane: _Lane, url: str, up: bool) -> None:
        """Start connecting the lane to `url`; `up`: a node known to be up (publishes wait)."""
        lane.target, lane.target_up = url, up
        lane.wake.clear()  # from here on, a supervisor that reaches a node cuts the wait short
        lane.attempt = _shared(self._open_link(url, lane.exchange), context=contextvars.Context())

    def _lane_ended(self, lane: _Lane, task: asyncio.Task[None]) -> None:
        """Forget the lane: the next publish to its exchange opens a new one."""
        if self._lanes.get(lane.exchange) is lane:
            del self._lanes[lane.exchange]
        if lane.link is not None and not lane.link.connection.is_closed:
            self._in_background(lane.link.connection.close())
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "a RabbitMQ publishing lane stopped; the next publish opens it again",
                exchange=lane.exchange,
                exc_info=task.exception(),
            )

    async def _keep_lane(self, lane: _Lane) -> None:
        """Keep the lane connected until close(), or until its exchange is found missing."""
        backoff = _FIRST_BACKOFF_SECONDS
        while lane.attempt is not None:
            try:
                link = await lane.attempt
            except aiormq.exceptions.ChannelNotFoundEntity:
                return  # marked missing: publishes fail fast, then the next one opens a lane
            except Exception as exc:
                failed = lane.target
                lane.attempt = None
                fields = {"exchange": lane.exchange, "url": redact(failed)}
                if isinstance(exc, _UNREACHABLE):
                    log.warning(
                        "cannot connect to RabbitMQ for an exchange's publishes",
                        error=str(exc) or type(exc).__name__,
                        retry_in_seconds=backoff,
                        **fields,
                    )
                else:
                    log.exception("unexpected error opening a RabbitMQ publishing lane", **fields)
                woken = await _wait(lane.wake, backoff)
                backoff = min(backoff * 2, self._max_backoff)
                url = self._lane_address(failed, to_control=woken)
                self._attempt(lane, url, up=self._control_up() and url == self._url)
                continue
            lane.link, lane.attempt = link, None
            backoff = _FIRST_BACKOFF_SECONDS
            log.info(
                "publishing to an exchange through RabbitMQ",
                exchange=lane.exchange,
                url=redact(link.url),
            )
            await link.lost_or_stuck()
            while link.stuck.is_set() and link.usable and not self._closing:
                link = lane.link = await self._renew(lane, link)
                await link.lost_or_stuck()
            if self._closing:
                return
            if _close_reason(link.channel) is not None:
                self._in_background(link.connection.close())
            else:
                self._in_background(_release_writers(link.connection))
            if lane.attempt is None:  # else a publish saw the loss first and started it
                self._attempt(lane, *self._after_loss(link))
            log.warning(
                "lost the connection for an exchange's publishes; reconnecting",
                exchange=lane.exchange,
                url=redact(link.url),
                next_url=redact(lane.target),
            )

    def _after_loss(self, link: _Link) -> tuple[str, bool]:
        """Where a lane goes after losing `link`, and whether that node is known to be up."""
        if _close_reason(link.channel) is not None:
            # The broker closed the channel (a missing exchange): the node is fine.
            return link.url, True
        # The connection went, with its node or the network: try another.
        url = self._lane_address(link.url, to_control=True)
        return url, self._control_up() and url == self._url

    async def _renew(self, lane: _Lane, link: _Link) -> _Link:
        """A new confirm channel on the link's connection; the stuck one closes once the
        publishes in flight on it settled. The same link when that fails (the connection is
        going: the keeper sees it lost)."""
        log.warning(
            "RabbitMQ nacked every publish of an exchange for a while; opening a new channel",
            exchange=lane.exchange,
            url=redact(link.url),
            nacked_for_seconds=round(_STUCK_AFTER_SECONDS, 1),
        )
        try:
            fresh = await self._open_channel(link.url, link.connection)
        except _UNREACHABLE:
            link.stuck.clear()
            return link
        link.retired = True
        if not link.publishing:
            self._in_background(link.channel.close())
        return fresh

    async def _open_channel(self, url: str, connection: AbstractConnection) -> _Link:
        channel = await _uncancelled(
            connection.channel(publisher_confirms=True, on_return_raises=True)
        )
        return _Link(url, connection, cast(aiormq.Channel, await channel.get_underlay_channel()))

    def _lane_address(self, after: str, *, to_control: bool) -> str:
        """Where a lane tries next, having lost or failed to reach `after`: the control
        connection's node (`to_control`, when it is up and not `after`), else the next address."""
        if to_control and self._control_up() and self._url != after:
            return self._url
        return self._urls[(self._urls.index(after) + 1) % len(self._urls)]

    async def _open_link(self, url: str, exchange: str) -> _Link:
        """A connection for the exchange's publishes, once a passive declare found it there."""
        connection = await self._connect(url, f"publisher {exchange}")
        try:
            await self._passive_declare(connection, exchange)
            return await self._open_channel(url, connection)
        except BaseException:
            with contextlib.suppress(*_LOST, OSError):
                await connection.close()
            raise


def _lost_in_flight(why: str) -> GatewayError:
    return GatewayError(
        Code.UNAVAILABLE,
        f"lost the connection to RabbitMQ before the confirm ({why}): the outcome is unknown; "
        "retry with the same idempotency_key to avoid a duplicate",
    )


def _closed_by_aiormq() -> bool:
    """Whether a CancelledError just caught is aiormq failing a future of a connection it
    closed, not a cancellation of this task: when no frame came for three heartbeat intervals
    aiormq cancels its reader, and every future of the connection is rejected with that
    CancelledError."""
    task = asyncio.current_task()
    return task is not None and not task.cancelling()


async def _uncancelled(work: Awaitable[_T]) -> _T:
    """`work`, aiormq's CancelledError for a connection it closed turned into ConnectionError."""
    try:
        return await work
    except asyncio.CancelledError:
        if not _closed_by_aiormq():
            raise
        raise ConnectionError("RabbitMQ closed the connection: no heartbeat") from None


async def _wait(event: asyncio.Event, seconds: float) -> bool:
    """Wait for the event, `seconds` at most; whether it was set."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()
    return event.is_set()


def _shared(
    work: Coroutine[Any, Any, _T], context: contextvars.Context | None = None
) -> asyncio.Future[_T]:
    """A task several callers may await, its error read even when every caller has gone."""
    task = asyncio.get_running_loop().create_task(work, context=context)
    task.add_done_callback(lambda done: done.cancelled() or done.exception())
    return task


def _close_reason(channel: aiormq.abc.AbstractChannel) -> BaseException | None:
    """Why the broker closed a channel; aiormq sets this before the channel reads as closed."""
    reason = getattr(channel, "_close_exception", None)
    return reason if isinstance(reason, BaseException) else None


async def _release_writers(connection: AbstractConnection) -> None:
    """Let the publishes still waiting to write on a dead connection through, to fail.

    aiormq's writer stops with its connection, and its write queue holds ten frames: a publish
    waiting for room in it would wait forever, as nothing fails it. Let through, each goes on
    to its confirm, which the closed connection has already failed (lost, outcome unknown).
    """
    underlay: Any = getattr(connection.transport, "connection", None)
    queue = getattr(underlay, "write_queue", None)
    while isinstance(queue, asyncio.Queue) and not queue.empty():
        while not queue.empty():
            queue.get_nowait()
        await asyncio.sleep(0)  # the publishes let through put their frames, and go on


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
