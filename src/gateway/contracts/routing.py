"""The route table: task type -> exchange, routing key, service name and payload type.

Built once at start-up from the `taskgateway.v1.route` option of every typed RPC in the
contracts, plus the untyped routes of the configuration. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, FileDescriptor, MethodDescriptor
from google.protobuf.message import Message
from taskgateway_api.taskgateway.v1 import options_pb2

from gateway.config import RouteSettings
from gateway.errors import Code, ConfigError, FieldViolation, GatewayError, clip

__all__ = ["Route", "RouteTable", "build_route_table", "typed_routes"]

# protoc's stubs type extensions as plain FieldDescriptors, which mypy cannot index with.
_ROUTE_OPTION: Any = options_pb2.route


@dataclass(frozen=True)
class Route:
    """Where one task type is published."""

    task_type: str
    exchange: str
    routing_key: str
    service_name: str
    # The typed payload message; None for a configured route whose payload is forwarded untouched.
    payload_type: type[Message] | None
    # The typed RPC serving this task type, if any.
    method: MethodDescriptor | None
    # Where the route was declared, for start-up errors ("rpc images.v1.ImagesService.Generate").
    origin: str


class RouteTable(Mapping[str, Route]):
    """Routes by task type, checked for duplicates and bad entries when built."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self._routes: dict[str, Route] = {}
        for route in routes:
            _check_route(route)
            if (seen := self._routes.get(route.task_type)) is not None:
                raise ConfigError(
                    f"{route.origin}: task type {route.task_type!r} "
                    f"is already routed by {seen.origin}"
                )
            self._routes[route.task_type] = route
        self.task_types: tuple[str, ...] = tuple(sorted(self._routes))

    def __getitem__(self, task_type: str) -> Route:
        return self._routes[task_type]

    def __iter__(self) -> Iterator[str]:
        return iter(self._routes)

    def __len__(self) -> int:
        return len(self._routes)

    def unknown(self, task_type: str, visible: Callable[[str], bool] | None = None) -> GatewayError:
        """INVALID_ARGUMENT for a task type the caller may not name, listing those it may.

        The error quotes the task type cut short (`clip`): a client may send a megabyte of it.
        """
        known = ", ".join(t for t in self.task_types if visible is None or visible(t))
        description = (
            "must not be empty" if not task_type else f"unknown task type {clip(task_type)!r}"
        )
        return GatewayError(
            Code.INVALID_ARGUMENT,
            f"task_type: {description}; known task types: {known}",
            [FieldViolation("task_type", f"{description}; known task types: {known}")],
        )


def typed_routes(files: Iterable[FileDescriptor]) -> list[Route]:
    """One route per RPC that carries the `taskgateway.v1.route` option."""
    routes = []
    for file in files:
        for service in file.services_by_name.values():
            for method in service.methods:
                options = method.GetOptions()
                if not options.HasExtension(_ROUTE_OPTION):
                    continue
                option: options_pb2.TaskRoute = options.Extensions[_ROUTE_OPTION]
                origin = f"rpc {method.full_name}"
                routes.append(
                    Route(
                        task_type=option.task_type,
                        exchange=option.exchange,
                        routing_key=option.routing_key or option.task_type,
                        service_name=option.service_name,
                        payload_type=_payload_type(method, origin),
                        method=method,
                        origin=origin,
                    )
                )
    return routes


def build_route_table(
    files: Iterable[FileDescriptor], configured: Iterable[RouteSettings]
) -> RouteTable:
    """Typed routes from the contracts, then the configured untyped ones."""
    routes = typed_routes(files)
    for index, entry in enumerate(configured):
        routes.append(
            Route(
                task_type=entry.task_type,
                exchange=entry.exchange,
                routing_key=entry.routing_key or entry.task_type,
                service_name=entry.service_name,
                payload_type=None,
                method=None,
                origin=f"routes[{index}] of the configuration (task_type {entry.task_type!r})",
            )
        )
    return RouteTable(routes)


def _check_route(route: Route) -> None:
    for name in ("task_type", "exchange", "service_name"):
        if not getattr(route, name).strip():
            raise ConfigError(f"{route.origin}: {name} is empty")
    if ":" in route.service_name:
        raise ConfigError(
            f"{route.origin}: service_name {route.service_name!r} contains ':', "
            "which separates the parts of the task key"
        )
    if len(route.routing_key.encode()) > 255:
        raise ConfigError(f"{route.origin}: routing key is longer than AMQP's 255 bytes")


def _payload_type(method: MethodDescriptor, origin: str) -> type[Message]:
    """The payload message of a typed request; the request must have the typed-request shape."""
    request: Descriptor = method.input_type
    fields = request.fields_by_name
    expected = {
        "user_id": FieldDescriptor.TYPE_STRING,
        "payload": FieldDescriptor.TYPE_MESSAGE,
        "idempotency_key": FieldDescriptor.TYPE_STRING,
    }
    for name, kind in expected.items():
        if name not in fields or fields[name].type != kind:
            raise ConfigError(
                f"{origin}: request {request.full_name} needs a field {name!r} "
                "(typed requests carry user_id, payload and idempotency_key)"
            )
    response = method.output_type.fields_by_name.get("task_key")
    if response is None or response.type != FieldDescriptor.TYPE_STRING:
        raise ConfigError(
            f"{origin}: response {method.output_type.full_name} needs a string task_key"
        )
    payload = fields["payload"].message_type
    assert payload is not None  # a TYPE_MESSAGE field always has one
    return message_factory.GetMessageClass(payload)
