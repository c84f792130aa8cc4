"""Every RPC the gateway serves, as transport-free functions of (request message, call context).

gRPC and the REST shim both look methods up here and only adapt their own wire format, so
validation, limits and logging are the same whatever the client spoke. Typed task RPCs are
found through the route table (read from the contracts), so a new one needs no code here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import message_factory, struct_pb2
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from taskgateway.v1 import gateway_pb2

from gateway.contracts import GATEWAY_SERVICE
from gateway.errors import Code, GatewayError
from gateway.ingest import Ingestor, TaskRequest
from gateway.routing import Route

__all__ = ["CallContext", "Method", "Methods", "struct_to_python"]


@dataclass(frozen=True)
class CallContext:
    """What a transport knows about a call, besides its request message."""

    transport: str
    # Seconds left before the caller's deadline; None when it set none.
    timeout: float | None = None
    # Call metadata with lower-case names (traceparent, x-request-id, authorization, ...).
    metadata: Mapping[str, str] = field(default_factory=dict)


Handler = Callable[[Any, CallContext], Awaitable[Message]]


@dataclass(frozen=True)
class Method:
    descriptor: MethodDescriptor
    request_type: type[Message]
    response_type: type[Message]
    handler: Handler

    @property
    def full_name(self) -> str:
        """As gRPC names it on the wire: /package.Service/Method."""
        return f"/{self.descriptor.containing_service.full_name}/{self.descriptor.name}"


class Methods(Mapping[str, Method]):
    """The gateway's methods by wire name (/images.v1.ImagesService/Generate)."""

    def __init__(self, ingestor: Ingestor, payload_schemas: Mapping[str, dict[str, Any]]) -> None:
        self._ingestor = ingestor
        # JSON Schemas of the task types' payloads, computed once at start-up.
        self._payload_schemas = payload_schemas
        methods = [
            _method(route.method, self._typed(route))
            for route in ingestor.routes.values()
            if route.method
        ]
        methods += [
            _method(GATEWAY_SERVICE.methods_by_name["Publish"], self._publish),
            _method(GATEWAY_SERVICE.methods_by_name["ListTaskTypes"], self._list_task_types),
            _method(
                GATEWAY_SERVICE.methods_by_name["GetTaskTypeSchema"], self._get_task_type_schema
            ),
        ]
        self._methods = {method.full_name: method for method in methods}

    def __getitem__(self, name: str) -> Method:
        return self._methods[name]

    def __iter__(self) -> Any:
        return iter(self._methods)

    def __len__(self) -> int:
        return len(self._methods)

    @property
    def service_names(self) -> list[str]:
        return sorted({m.descriptor.containing_service.full_name for m in self._methods.values()})

    def _typed(self, route: Route) -> Handler:
        assert route.method is not None
        response_type = message_factory.GetMessageClass(route.method.output_type)

        async def handle(request: Any, context: CallContext) -> Message:
            task = TaskRequest(
                user_id=request.user_id,
                task_type=route.task_type,
                payload=request.payload if request.HasField("payload") else None,
                idempotency_key=request.idempotency_key,
            )
            return response_type(task_key=await self._submit(task, context))

        return handle

    async def _publish(
        self, request: gateway_pb2.PublishRequest, context: CallContext
    ) -> gateway_pb2.PublishResponse:
        task = TaskRequest(
            user_id=request.user_id,
            task_type=request.task_type,
            payload=struct_to_python(request.payload) if request.HasField("payload") else None,
            idempotency_key=request.idempotency_key,
        )
        return gateway_pb2.PublishResponse(task_key=await self._submit(task, context))

    async def _submit(self, task: TaskRequest, context: CallContext) -> str:
        accepted = await self._ingestor.submit(
            task, timeout=context.timeout, traceparent=context.metadata.get("traceparent")
        )
        return accepted.task_key

    async def _list_task_types(
        self, request: gateway_pb2.ListTaskTypesRequest, context: CallContext
    ) -> gateway_pb2.ListTaskTypesResponse:
        routes = self._ingestor.routes
        return gateway_pb2.ListTaskTypesResponse(
            task_types=[_catalog_entry(routes[name]) for name in routes.task_types]
        )

    async def _get_task_type_schema(
        self, request: gateway_pb2.GetTaskTypeSchemaRequest, context: CallContext
    ) -> gateway_pb2.GetTaskTypeSchemaResponse:
        routes = self._ingestor.routes
        if request.task_type not in routes:
            raise GatewayError(
                Code.NOT_FOUND,
                f"unknown task type {request.task_type!r}; known task types: "
                + ", ".join(routes.task_types),
            )
        route = routes[request.task_type]
        response = gateway_pb2.GetTaskTypeSchemaResponse(task_type=route.task_type)
        response.json_schema.update(self._payload_schemas[route.task_type])
        return response


def _catalog_entry(route: Route) -> gateway_pb2.TaskType:
    rpc = ""
    if route.method is not None:
        rpc = f"{route.method.containing_service.full_name}/{route.method.name}"
    return gateway_pb2.TaskType(
        task_type=route.task_type,
        exchange=route.exchange,
        routing_key=route.routing_key,
        service_name=route.service_name,
        rpc=rpc,
    )


def _method(descriptor: MethodDescriptor, handler: Handler) -> Method:
    return Method(
        descriptor=descriptor,
        request_type=message_factory.GetMessageClass(descriptor.input_type),
        response_type=message_factory.GetMessageClass(descriptor.output_type),
        handler=handler,
    )


def struct_to_python(struct: struct_pb2.Struct) -> dict[str, Any]:
    """A Struct as plain JSON values, integral numbers as ints.

    Struct keeps every number as a double; the legacy service forwarded `1` as `1`, so
    integral values within a double's exact range become ints again.
    """
    return {key: _value_to_python(value) for key, value in struct.fields.items()}


_EXACT_INTEGER_LIMIT = 2**53


def _value_to_python(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return struct_to_python(value.struct_value)
    if kind == "list_value":
        return [_value_to_python(item) for item in value.list_value.values]
    if kind == "number_value":
        number = value.number_value
        if number.is_integer() and abs(number) <= _EXACT_INTEGER_LIMIT:
            return int(number)
        return number
    if kind in ("string_value", "bool_value"):
        return getattr(value, kind)
    return None
