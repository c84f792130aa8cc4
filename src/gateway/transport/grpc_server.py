"""The gRPC server: the gateway's methods, health checking and reflection on one port.

Methods go through `grpc_service` (and so through the middleware seam); health and reflection
are grpc's own services, outside it.
"""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from gateway.config import GrpcSettings
from gateway.core.methods import Methods
from gateway.errors import ConfigError
from gateway.transport.grpc_service import generic_handlers
from gateway.transport.reflection import enable_reflection

__all__ = ["GrpcServer"]

_HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


class GrpcServer:
    def __init__(self, methods: Methods, settings: GrpcSettings, *, reuse_port: bool) -> None:
        self._methods = methods
        self._settings = settings
        self._reuse_port = reuse_port
        self._services = methods.service_names
        # `health.aio` is grpc's asyncio servicer; the package ships no type stubs for it.
        self._health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self._server: grpc.aio.Server | None = None
        self.port: int | None = None

    async def start(self) -> int:
        """Listen on `grpc.address`; the port (the one the system chose for port 0)."""
        # Made here, not in __init__: a grpc.aio server belongs to the loop it was made in.
        settings = self._settings
        self._server = server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", settings.max_request_bytes),
                ("grpc.so_reuseport", int(self._reuse_port)),
                ("grpc.max_concurrent_streams", settings.max_concurrent_streams),
                ("grpc.max_connection_age_ms", _ms(settings.max_connection_age_seconds)),
                (
                    "grpc.max_connection_age_grace_ms",
                    _ms(settings.max_connection_age_grace_seconds),
                ),
            ],
            maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
        )
        server.add_generic_rpc_handlers(generic_handlers(self._methods))
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        enable_reflection([*self._services, _HEALTH_SERVICE], server)
        address = self._settings.address
        try:
            self.port = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise ConfigError(f"grpc.address: cannot listen on {address}: {exc}") from exc
        await server.start()
        return self.port

    async def set_serving(self, serving: bool) -> None:
        """Report SERVING or NOT_SERVING for the server ("") and each of the gateway's services."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ("", *self._services):
            await self._health.set(service, status)

    async def enter_graceful_shutdown(self) -> None:
        """NOT_SERVING from now on, whatever the broker does."""
        await self._health.enter_graceful_shutdown()

    async def stop(self, grace: float) -> None:
        if self._server is not None:
            await self._server.stop(grace)


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))
