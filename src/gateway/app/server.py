"""Wiring: settings -> broker, route table, methods -> gRPC server and REST shim.

Also the lifecycle: start, serve until SIGTERM/SIGINT, and shut down gracefully (report
NOT_SERVING, stop accepting, let in-flight publishes finish, close the broker connection).
"""

from __future__ import annotations

import asyncio
import gc
import signal
import sys
from pathlib import Path
from typing import Any

import structlog
from prometheus_client import Gauge

from gateway import __version__
from gateway.app.clients_file import ClientsFile
from gateway.app.health import Health
from gateway.app.log import configure_logging_for
from gateway.app.tracing import start_tracing
from gateway.app.workers import Siblings, WorkerStates
from gateway.broker import Broker
from gateway.broker.memory import Definitions, MemoryBroker
from gateway.broker.rabbit import RabbitBroker, TlsFiles
from gateway.config import Settings
from gateway.contracts.comments import Comments
from gateway.contracts.files import CONTRACT_FILES
from gateway.contracts.http_rules import http_rules
from gateway.contracts.openapi import openapi_document
from gateway.contracts.routing import RouteTable, build_route_table
from gateway.contracts.schema import message_schema
from gateway.core.auth import Auth
from gateway.core.ingest import Ingestor
from gateway.core.methods import Methods
from gateway.core.metrics import TaskMetrics
from gateway.core.middleware import LogContext, Middleware
from gateway.core.quota import Buckets, Quota
from gateway.errors import ConfigError
from gateway.transport.grpc_server import GrpcServer
from gateway.transport.http_shim import HttpShim

__all__ = ["Gateway", "make_broker", "serve", "serve_main"]

log = structlog.get_logger(logger_name="gateway.server")

# Time left, once every publish has settled, for handlers to write their answers.
_ANSWER_GRACE_SECONDS = 1.0

BUILD_INFO = Gauge(
    "task_gateway_build_info",
    "Always 1; the version of the gateway in its label.",
    ("version",),
    multiprocess_mode="livemax",
)


def make_broker(settings: Settings) -> Broker:
    """RabbitMQ when an address is configured, otherwise the in-memory broker.

    ConfigError when a file of `[broker.tls]` cannot be used.
    """
    if settings.broker_urls:
        tls = settings.broker.tls
        return RabbitBroker(
            settings.broker_urls,
            heartbeat_seconds=settings.broker.heartbeat_seconds,
            connect_timeout_seconds=settings.broker.connect_timeout_seconds,
            reconnect_max_backoff_seconds=settings.broker.reconnect_max_backoff_seconds,
            missing_exchange_seconds=settings.broker.missing_exchange_seconds,
            connection_name=settings.broker.app_id,
            tls=(
                TlsFiles(tls.ca_file, tls.cert_file, tls.key_file)
                if tls.ca_file or tls.cert_file
                else None  # plain amqp://, or amqps:// verified against the system's CAs
            ),
        )
    return MemoryBroker(Definitions.load(Path(settings.broker.definitions)))


def payload_schemas(routes: RouteTable, comments: Comments) -> dict[str, dict[str, Any]]:
    """The JSON Schema of every task type's payload; any object for untyped routes."""
    return {
        task_type: (
            message_schema(route.payload_type.DESCRIPTOR, comments)
            if route.payload_type is not None
            else {"type": "object", "description": "forwarded untouched"}
        )
        for task_type, route in routes.items()
    }


class Gateway:
    """One gateway process: its broker, its gRPC server, its REST shim and their lifecycle."""

    def __init__(
        self,
        settings: Settings,
        broker: Broker | None = None,
        *,
        reuse_port: bool = False,
        workers: WorkerStates | None = None,
        worker_index: int = 0,
        tracer: Any = None,
        buckets: Buckets | None = None,
    ) -> None:
        """`workers`: the states shared by the workers of this gateway, this one's at
        `worker_index` (gateway.app.workers); None for a gateway of one process.
        `tracer`: an OpenTelemetry tracer (gateway.app.tracing) when tracing is on.
        `buckets`: the rate quotas' buckets, shared by the workers (made before the fork)."""
        self.settings = settings
        self.routes = build_route_table(CONTRACT_FILES, settings.routes)
        self.broker = broker if broker is not None else make_broker(settings)
        # Authentication: the clients, from their file (ConfigError: start-up stops).
        self.clients_file = (
            ClientsFile(settings.auth.clients_file) if settings.auth.mode == "required" else None
        )
        self.auth = Auth(self.clients_file.clients) if self.clients_file is not None else None
        chain = middlewares(
            settings,
            tracer,
            auth=self.auth,
            quota=Quota(buckets or Buckets()) if self.auth is not None else None,
        )
        self.ingestor = Ingestor(
            self.routes,
            self.broker,
            app_id=settings.broker.app_id,
            publish_timeout=settings.broker.publish_timeout_seconds,
            max_in_flight=settings.broker.max_in_flight,
            middlewares=chain,
        )
        comments = Comments.load()
        self.methods = Methods(
            self.ingestor,
            payload_schemas(self.routes, comments),
            window=settings.grpc.stream_window,
            max_batch_entries=settings.grpc.max_batch_entries,
            middlewares=chain,
        )
        self.health = Health(self.broker, self.routes, workers=workers, worker_index=worker_index)
        self.grpc = GrpcServer(
            self.methods,
            settings.grpc,
            reuse_port=reuse_port,
            authenticate=self.auth.authenticate if self.auth is not None else None,
        )
        rules = http_rules(CONTRACT_FILES)
        self.http = HttpShim(
            self.methods,
            rules,
            openapi=openapi_document(
                rules,
                comments,
                self.routes,
                version=__version__,
                item_limits={
                    f"{method.descriptor.input_type.full_name}.{field}": limit
                    for method in self.methods.values()
                    for field, limit in method.limits.items()
                },
            ),
            readiness=self.health.readiness,
            max_request_bytes=settings.grpc.max_request_bytes,
            tls=settings.server.tls,
            authenticate=self.auth.authenticate if self.auth is not None else None,
        )
        # Set when several worker processes share the ports.
        self._reuse_port = reuse_port
        self.grpc_port: int | None = None
        self.http_port: int | None = None
        self.admin_port: int | None = None

    async def start(self) -> None:
        """Start the broker connection and listen; does not wait for the broker to be reachable.

        If a listener cannot start, what did start is stopped before the error goes on.
        """
        self.health.watch(self.grpc.set_serving)
        BUILD_INFO.labels(__version__).set(1)
        try:
            self.health.start()
            await self.broker.start()
            self.grpc_port = await self.grpc.start()
            self.http_port = await self.http.start(
                self.settings.server.address,
                reuse_port=self._reuse_port,
                answer_grace=_ANSWER_GRACE_SECONDS,
                max_connections=self.settings.server.max_connections,
                keepalive_timeout=self.settings.server.keepalive_timeout_seconds,
            )
            if self.settings.admin.address:
                self.admin_port = await self.http.start_admin(
                    self.settings.admin.address,
                    reuse_port=self._reuse_port,
                    keepalive_timeout=self.settings.server.keepalive_timeout_seconds,
                )
            if self.clients_file is not None:
                self.clients_file.start()
        except BaseException:
            await self._release(answer_grace=0)
            raise
        # What start-up made (modules, descriptors, the route table, the OpenAPI document) lives
        # as long as the process: frozen, a full garbage collection no longer walks it. One
        # that a 1 MB request set off held the event loop 20 ms instead of 8 (bench/loop_lag.py).
        gc.freeze()
        log.info(
            "task gateway listening",
            grpc=f"{self.settings.grpc.address.rpartition(':')[0]}:{self.grpc_port}",
            http=f"{self.settings.server.address.rpartition(':')[0]}:{self.http_port}",
            broker=self.broker.description,
            task_types=list(self.routes.task_types),
        )

    async def readiness(self) -> str | None:
        """None when ready to publish (broker connected, every exchange present), else why not."""
        return await self.health.readiness()

    async def begin_shutdown(self) -> None:
        """Refuse new tasks (UNAVAILABLE), report NOT_SERVING and not ready; calls go on."""
        self.health.stopping = True
        # At once, whatever the transports still accept while they stop listening.
        self.ingestor.close()
        await self.grpc.enter_graceful_shutdown()

    async def stop(self, grace: float | None = None) -> None:
        """Report NOT_SERVING, refuse new calls, let in-flight ones finish, then disconnect."""
        grace = self.settings.grpc.shutdown_grace_seconds if grace is None else grace
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        await self.begin_shutdown()
        # The publishes in flight settle first, while the listeners stay open and answer new
        # calls UNAVAILABLE: grpc's own shutdown would CANCEL the calls it had not handed over
        # yet (clients do not retry those), and an open Health/Watch stream would hold
        # server.stop() for the whole grace period.
        unfinished = await self.ingestor.drain(max(0.0, deadline - loop.time()))
        if unfinished:
            log.warning("publishes still unconfirmed at shutdown", count=unfinished)
        # Then stop listening, leaving the settled calls a moment to send their answers.
        await self._release(min(_ANSWER_GRACE_SECONDS, max(0.0, deadline - loop.time())))
        log.info("task gateway stopped")

    async def _release(self, answer_grace: float) -> None:
        """Stop listening (calls get `answer_grace` to answer), disconnect, stop following."""
        await asyncio.gather(self.grpc.stop(answer_grace), self.http.stop())
        await self.broker.close()
        await self.health.stop()
        if self.clients_file is not None:
            await self.clients_file.stop()

    async def serve(self, siblings: Siblings | None = None) -> bool:
        """Run until SIGTERM or SIGINT, then shut down gracefully.

        With `siblings` (this is the first of several workers) signals are passed on to them,
        a sibling that exits on its own stops this one too, and this one returns once they
        all exited: False when one had failed.
        """
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_signal(signum: int) -> None:
            if siblings is not None:
                siblings.signal(signum)
            stop.set()

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal, signum)

        def on_hangup() -> None:  # read the clients file again, in every worker
            if siblings is not None:
                siblings.signal(signal.SIGHUP, stopping=False)
            if self.clients_file is not None:
                self.clients_file.reload()

        loop.add_signal_handler(signal.SIGHUP, on_hangup)
        try:
            if siblings is not None:
                siblings.watch(on_failure=stop.set)
                log.info("workers started", count=len(siblings.pids), pids=siblings.pids)
            await self.start()
            try:
                await stop.wait()
                log.info("shutting down", grace_seconds=self.settings.grpc.shutdown_grace_seconds)
            finally:
                await self.stop()
        finally:
            if siblings is not None:
                siblings.signal(signal.SIGTERM)
                await siblings.wait()
        return siblings is None or not siblings.failed


def middlewares(
    settings: Settings, tracer: Any = None, *, auth: Auth | None = None, quota: Quota | None = None
) -> list[Middleware]:
    """The middlewares every method (and every task) goes through, the first outermost.

    The log context first, so every line of a call has it; the trace next, so that it spans
    the refusals too; then who the caller is, before anything counts its tasks or its quota.
    """
    chain: list[Middleware] = [LogContext()]
    if tracer is not None:
        from gateway.core.tracing import Tracing  # OpenTelemetry is an optional extra

        chain.append(Tracing(tracer))
    if auth is not None:
        chain.append(auth)
    chain.append(TaskMetrics())
    if quota is not None:
        chain.append(quota)
    return chain


def serve(
    settings: Settings,
    *,
    reuse_port: bool = False,
    siblings: Siblings | None = None,
    workers: WorkerStates | None = None,
    worker_index: int = 0,
    buckets: Buckets | None = None,
) -> bool:
    """Run one gateway in this process until SIGTERM or SIGINT (on uvloop where there is one)."""
    tracing = start_tracing(__version__)  # here, in each worker: after the fork
    gateway = Gateway(
        settings,
        reuse_port=reuse_port,
        workers=workers,
        worker_index=worker_index,
        tracer=tracing[0] if tracing else None,
        buckets=buckets,
    )
    try:
        return _run(gateway, siblings)
    finally:
        if tracing is not None:
            tracing[1]()  # the spans still buffered go out


def _run(gateway: Gateway, siblings: Siblings | None) -> bool:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        return asyncio.run(gateway.serve(siblings))
    return uvloop.run(gateway.serve(siblings))


def serve_main(
    settings: Settings,
    *,
    reuse_port: bool = False,
    siblings: Siblings | None = None,
    workers: WorkerStates | None = None,
    worker_index: int = 0,
    buckets: Buckets | None = None,
) -> int:
    """`python -m gateway`, or one of its workers (`reuse_port`); the exit code.

    `siblings`: the workers this one forked (gateway.app.workers), to watch and stop with it.
    `workers`: the states all the workers share, this one's at `worker_index`; `buckets`: the
    rate quotas' buckets they share.
    """
    configure_logging_for(settings)
    if not settings.broker_urls:
        log.warning(
            "NO RABBITMQ CONFIGURED: publishing to the in-memory broker. Messages are only "
            "logged here and are lost on exit; set TASK_GATEWAY__BROKER__ADDRESS=amqp://... "
            "to publish to RabbitMQ",
            definitions=settings.broker.definitions,
        )
    try:
        ok = serve(
            settings,
            reuse_port=reuse_port,
            siblings=siblings,
            workers=workers,
            worker_index=worker_index,
            buckets=buckets,
        )
    except ConfigError as exc:
        print(f"task-gateway: configuration error: {exc}", file=sys.stderr)
        return 2
    return 0 if ok else 1
