"""Wiring: settings -> broker, route table, ingestor -> gRPC server with health and reflection.

Also the lifecycle: start, serve until SIGTERM/SIGINT, and shut down gracefully (report
NOT_SERVING, stop accepting, let in-flight publishes finish, close the broker connection).
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from gateway.broker import Broker
from gateway.broker.memory import Definitions, MemoryBroker
from gateway.broker.rabbit import RabbitBroker
from gateway.config import Settings
from gateway.contracts import CONTRACT_FILES
from gateway.errors import ConfigError
from gateway.grpc_service import GrpcService
from gateway.ingest import Ingestor
from gateway.routing import build_route_table

__all__ = ["Gateway", "make_broker"]

log = structlog.get_logger("gateway.server")

_HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


def make_broker(settings: Settings) -> Broker:
    """RabbitMQ when an address is configured, otherwise the in-memory broker."""
    if settings.broker_urls:
        return RabbitBroker(
            settings.broker_urls,
            heartbeat_seconds=settings.broker.heartbeat_seconds,
            connect_timeout_seconds=settings.broker.connect_timeout_seconds,
            reconnect_max_backoff_seconds=settings.broker.reconnect_max_backoff_seconds,
            connection_name=settings.broker.app_id,
        )
    return MemoryBroker(Definitions.load(Path(settings.broker.definitions)))


class Gateway:
    """One gateway process: its broker, its gRPC server and their lifecycle."""

    def __init__(self, settings: Settings, broker: Broker | None = None) -> None:
        self.settings = settings
        self.routes = build_route_table(CONTRACT_FILES, settings.routes)
        self.broker = broker if broker is not None else make_broker(settings)
        self.ingestor = Ingestor(
            self.routes,
            self.broker,
            app_id=settings.broker.app_id,
            publish_timeout=settings.broker.publish_timeout_seconds,
            max_in_flight=settings.broker.max_in_flight,
        )
        # `health.aio` is grpc's asyncio servicer; the package ships no type stubs for it.
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self.grpc_service = GrpcService(self.ingestor)
        self._health_updates: set[asyncio.Task[None]] = set()
        self.server: grpc.aio.Server | None = None
        self.grpc_port: int | None = None

    async def start(self) -> None:
        """Start the broker connection and listen; does not wait for the broker to be reachable."""
        self.server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", self.settings.grpc.max_request_bytes),
                ("grpc.so_reuseport", 0),
            ]
        )
        self.server.add_generic_rpc_handlers(self.grpc_service.handlers())
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            [*self.grpc_service.service_names, _HEALTH_SERVICE, reflection.SERVICE_NAME],
            self.server,
        )
        address = self.settings.grpc.address
        try:
            self.grpc_port = self.server.add_insecure_port(address)
        except RuntimeError as exc:
            raise ConfigError(f"grpc.address: cannot listen on {address}: {exc}") from exc
        self.broker.add_state_listener(self._on_broker_state)
        await self.broker.start()
        await self.server.start()
        log.info(
            "task gateway listening",
            grpc=f"{address.rpartition(':')[0]}:{self.grpc_port}",
            broker=self.broker.description,
            task_types=list(self.routes.task_types),
        )

    async def stop(self, grace: float | None = None) -> None:
        """Report NOT_SERVING, refuse new calls, let in-flight ones finish, then disconnect."""
        grace = self.settings.grpc.shutdown_grace_seconds if grace is None else grace
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        await self.health.enter_graceful_shutdown()
        if self.server is not None:
            await self.server.stop(grace)
        # Publishes whose callers already gave up (deadline) may still be waiting for a confirm.
        unfinished = await self.ingestor.drain(max(0.0, deadline - loop.time()))
        if unfinished:
            log.warning("publishes still unconfirmed at shutdown", count=unfinished)
        await self.broker.close()
        await asyncio.gather(*self._health_updates, return_exceptions=True)
        log.info("task gateway stopped")

    async def serve(self) -> None:
        """Run until SIGTERM or SIGINT, then shut down gracefully."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await self.start()
        try:
            await stop.wait()
            log.info("shutting down", grace_seconds=self.settings.grpc.shutdown_grace_seconds)
        finally:
            await self.stop()

    def _on_broker_state(self, connected: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if connected
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        update = asyncio.ensure_future(self._set_health(status))
        self._health_updates.add(update)
        update.add_done_callback(self._health_updates.discard)

    async def _set_health(self, status: health_pb2.HealthCheckResponse.ServingStatus) -> None:
        for service in ("", *self.grpc_service.service_names):
            await self.health.set(service, status)
