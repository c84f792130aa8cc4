"""The gRPC transport: one handler per typed RPC, read from the contracts, plus `Publish`.

Handlers are built from the service descriptors, so a new typed RPC in a contract is served
with no Python change. Each handler turns its request into a `TaskRequest`, calls the
shared `Ingestor`, and maps a `GatewayError` to a gRPC status with `google.rpc` details.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import structlog
from google.protobuf import message_factory, struct_pb2
from google.protobuf.any_pb2 import Any as AnyProto
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from taskgateway.v1 import gateway_pb2

from gateway.contracts import GATEWAY_SERVICE
from gateway.errors import GatewayError
from gateway.ingest import Ingestor, TaskRequest
from gateway.routing import Route

__all__ = ["GrpcService", "struct_to_python"]

Handler = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Message]]


class GrpcService:
    """The gateway's gRPC services, as generic handlers for a `grpc.aio.Server`."""

    def __init__(self, ingestor: Ingestor) -> None:
        self._ingestor = ingestor

    @property
    def service_names(self) -> list[str]:
        return sorted({GATEWAY_SERVICE.full_name} | {s.full_name for s in self._typed_services()})

    def handlers(self) -> list[grpc.GenericRpcHandler[Any, Any]]:
        by_service: dict[ServiceDescriptor, dict[str, grpc.RpcMethodHandler[Any, Any]]] = {}
        for route in self._ingestor.routes.values():
            if route.method is not None:
                by_service.setdefault(route.method.containing_service, {})[route.method.name] = (
                    _unary(route.method, self._typed_handler(route))
                )
        by_service.setdefault(GATEWAY_SERVICE, {})["Publish"] = _unary(
            GATEWAY_SERVICE.methods_by_name["Publish"], self._publish
        )
        return [
            grpc.method_handlers_generic_handler(service.full_name, methods)
            for service, methods in by_service.items()
        ]

    def _typed_services(self) -> set[ServiceDescriptor]:
        return {
            route.method.containing_service
            for route in self._ingestor.routes.values()
            if route.method is not None
        }

    def _typed_handler(self, route: Route) -> Handler:
        assert route.method is not None
        response_type = message_factory.GetMessageClass(route.method.output_type)

        async def handle(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Message:
            task = TaskRequest(
                user_id=request.user_id,
                task_type=route.task_type,
                payload=request.payload if request.HasField("payload") else None,
                idempotency_key=request.idempotency_key,
            )
            return response_type(task_key=await self._submit(task, context))

        return handle

    async def _publish(
        self, request: gateway_pb2.PublishRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> gateway_pb2.PublishResponse:
        task = TaskRequest(
            user_id=request.user_id,
            task_type=request.task_type,
            payload=struct_to_python(request.payload) if request.HasField("payload") else None,
            idempotency_key=request.idempotency_key,
        )
        return gateway_pb2.PublishResponse(task_key=await self._submit(task, context))

    async def _submit(self, task: TaskRequest, context: grpc.aio.ServicerContext[Any, Any]) -> str:
        metadata = dict(context.invocation_metadata() or ())
        traceparent = metadata.get("traceparent")
        try:
            request_id = metadata.get("x-request-id")
            with structlog.contextvars.bound_contextvars(
                transport="grpc",
                peer=context.peer(),
                **({"request_id": request_id} if request_id else {}),
            ):
                accepted = await self._ingestor.submit(
                    task,
                    timeout=context.time_remaining(),
                    traceparent=traceparent if isinstance(traceparent, str) else None,
                )
        except GatewayError as error:
            status = rpc_status.to_status(to_status_proto(error))
            await context.abort(status.code, status.details, status.trailing_metadata)
        return accepted.task_key


def to_status_proto(error: GatewayError) -> status_pb2.Status:
    """The google.rpc.Status of an error, with a BadRequest detail naming each bad field."""
    status = status_pb2.Status(code=int(error.code), message=error.message)
    if error.violations:
        detail = AnyProto()
        detail.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=v.field, description=v.description
                    )
                    for v in error.violations
                ]
            )
        )
        status.details.append(detail)
    return status


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


def _unary(method: MethodDescriptor, handler: Handler) -> grpc.RpcMethodHandler[Any, Any]:
    request_type = message_factory.GetMessageClass(method.input_type)
    return grpc.unary_unary_rpc_method_handler(
        handler,
        request_deserializer=request_type.FromString,
        response_serializer=lambda response: response.SerializeToString(),
    )
