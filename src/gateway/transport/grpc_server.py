"""The gRPC server: the gateway's methods, health checking and reflection on one port.

Methods go through `grpc_service` (and so through the middleware seam); health and reflection
are grpc's own services, outside it.

grpc.max_concurrent_rpcs is grpc's own limit on the calls of a worker, whatever their method.
Health stays open to anyone (probes present no credentials), and a Health/Watch stream stays
open as long as its client likes: so open Watch streams are capped at a tenth of the limit
(`_capped_watch`), and anonymous clients cannot take the places of the gateway's calls.
"""

from __future__ import annotations

from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from gateway.config import GrpcSettings
from gateway.core.context import Authenticate
from gateway.core.methods import Methods
from gateway.errors import ConfigError, GatewayError
from gateway.transport import metrics
from gateway.transport.grpc_service import ServiceHandlers, call_context, method_handlers
from gateway.transport.reflection import reflection_handlers
from gateway.transport.tls import CertificateFiles, grpc_credentials

__all__ = ["GrpcServer"]

_HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name

# Open Health/Watch streams hold at most 1/_WATCH_DIVISOR of grpc.max_concurrent_rpcs.
_WATCH_DIVISOR = 10


class GrpcServer:
    def __init__(
        self,
        methods: Methods,
        settings: GrpcSettings,
        *,
        reuse_port: bool,
        authenticate: Authenticate | None = None,
    ) -> None:
        """`authenticate`: when calls need a known client, reflection needs one too (health
        stays open, for probes)."""
        self._methods = methods
        self._authenticate = authenticate
        # Read at construction, so that unreadable files stop start-up naming the setting.
        self._credentials = (
            grpc_credentials(CertificateFiles("grpc.tls", settings.tls))
            if settings.tls.enabled
            else None
        )
        # Every method of the gateway's own services has its series from the start, at 0.
        metrics.initialise_grpc(
            ("bidi_stream" if method.streaming else "unary", method.service, method.name)
            for method in methods.values()
        )
        self._settings = settings
        self._reuse_port = reuse_port
        self._services = methods.service_names
        # `health.aio` is grpc's asyncio servicer; the package ships no type stubs for it.
        self._health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self._watches = 0  # Health/Watch streams open now
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
        services = {
            **method_handlers(
                self._methods, identify_peers=bool(self._settings.tls.client_ca_file)
            ),
            **self._capped_watch(_health_handlers(self._health)),
            **self._guarded(reflection_handlers([*self._services, _HEALTH_SERVICE])),
        }
        for service, handlers in services.items():
            metered_handlers = {
                name: metrics.metered(service, name, handler) for name, handler in handlers.items()
            }
            # Registered methods are found without the generic handlers' lookup per call.
            # (grpc-stubs predates the method; grpc.aio.Server has had it since 1.62.)
            server.add_registered_method_handlers(service, metered_handlers)  # type: ignore[attr-defined]
            server.add_generic_rpc_handlers(
                [grpc.method_handlers_generic_handler(service, metered_handlers)]
            )
        address = self._settings.address
        try:
            if self._credentials is not None:
                self.port = server.add_secure_port(address, self._credentials)
            else:
                self.port = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise ConfigError(f"grpc.address: cannot listen on {address}: {exc}") from exc
        await server.start()
        return self.port

    def _guarded(self, services: ServiceHandlers) -> ServiceHandlers:
        """The services' (bidirectional streaming) handlers, refusing unknown callers first."""
        authenticate = self._authenticate
        if authenticate is None:
            return services
        guarded: ServiceHandlers = {}
        for service, handlers in services.items():
            guarded[service] = {}
            for name, handler in handlers.items():
                behaviour = handler.stream_stream
                assert behaviour is not None, f"{service}/{name} is not bidirectional"
                method = f"/{service}/{name}"

                async def checked(
                    requests: Any,
                    context: grpc.aio.ServicerContext[Any, Any],
                    behaviour: Any = behaviour,
                    method: str = method,
                ) -> Any:
                    try:
                        authenticate(call_context(method, context))
                    except GatewayError as error:
                        await context.abort(grpc.StatusCode.UNAUTHENTICATED, error.message)
                    async for response in behaviour(requests, context):
                        yield response

                guarded[service][name] = grpc.stream_stream_rpc_method_handler(
                    checked,
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer,
                )
        return guarded

    def _capped_watch(self, services: ServiceHandlers) -> ServiceHandlers:
        """Health's handlers, Watch refusing a stream (RESOURCE_EXHAUSTED) while a tenth of
        grpc.max_concurrent_rpcs (one at least) are open already: each one holds a place
        under grpc's limit for as long as it stays open. Check, a unary call, is left alone."""
        limit = max(1, self._settings.max_concurrent_rpcs // _WATCH_DIVISOR)
        handler = services[_HEALTH_SERVICE]["Watch"]
        # grpc.aio's coroutine, which grpc-stubs types as the synchronous server's iterator.
        watch: Any = handler.unary_stream
        assert watch is not None, "Health/Watch is server-streaming"

        async def capped(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            if self._watches >= limit:
                await context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"this worker has {self._watches} Health/Watch streams open, its most (a "
                    "tenth of grpc.max_concurrent_rpcs, so that the gateway's own calls keep "
                    "their places); use Health/Check, or watch again later",
                )
            self._watches += 1
            try:
                await watch(request, context)
            finally:
                self._watches -= 1

        capped_handler = grpc.unary_stream_rpc_method_handler(
            capped,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
        return {**services, _HEALTH_SERVICE: {**services[_HEALTH_SERVICE], "Watch": capped_handler}}

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


class _Capture:
    """Stands in for a server to read the handlers a generated add_*_to_server registers."""

    def __init__(self) -> None:
        self.services: ServiceHandlers = {}

    def add_generic_rpc_handlers(self, handlers: object) -> None:
        pass  # the same handlers come by add_registered_method_handlers

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        self.services[service] = dict(handlers)


def _health_handlers(servicer: Any) -> ServiceHandlers:
    """grpc.health.v1.Health's handlers, as its generated code would register them."""
    capture = _Capture()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, capture)
    return capture.services
