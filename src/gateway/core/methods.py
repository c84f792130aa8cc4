"""Every RPC the gateway serves, as transport-free functions of (request, call context).

gRPC and the REST shim both look methods up here and only adapt their own wire format, so
validation, limits and logging are the same whatever the client spoke. Typed task RPCs are
found through the route table (read from the contracts), so a new one needs no code here;
batches and streams take typed requests as `google.protobuf.Any`, found the same way.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from google.protobuf import message_factory, struct_pb2
from google.protobuf.message import DecodeError, Message
from taskgateway_api.taskgateway.v1 import gateway_pb2

from gateway.contracts.files import GATEWAY_SERVICE
from gateway.contracts.jsonmapping import entry_violations, json_number
from gateway.contracts.routing import Route
from gateway.core.context import CallContext
from gateway.core.ingest import Accepted, Ingestor, TaskRequest
from gateway.core.method import Method, UnaryHandler, too_many_items
from gateway.core.middleware import Middleware, apply, visibility
from gateway.core.status import to_status_proto
from gateway.core.window import Outcome, PublishWindow
from gateway.errors import Code, FieldViolation, GatewayError, clip, invalid_argument

__all__ = ["Methods", "struct_to_python"]

# The longest a batch works through its entries before letting the event loop run others.
_TIME_SLICE_SECONDS = 0.0005


class Methods(Mapping[str, Method]):
    """The gateway's methods by wire name (/images.v1.ImagesService/Generate).

    Each is wrapped once by `middlewares` (gateway.core.middleware), the first outermost.
    """

    def __init__(
        self,
        ingestor: Ingestor,
        payload_schemas: Mapping[str, dict[str, Any]],
        *,
        window: int,
        max_batch_entries: int,
        middlewares: Sequence[Middleware] = (),
    ) -> None:
        self._ingestor = ingestor
        # JSON Schemas of the task types' payloads, computed once at start-up.
        self._payload_schemas = payload_schemas
        # Tasks of one batch or stream awaiting their confirm at once. A stream stops reading
        # while its window is full, so gRPC flow control slows the client down.
        self._window = window
        self._max_batch_entries = max_batch_entries
        self._visible = visibility(middlewares)
        typed = [(route, route.method) for route in ingestor.routes.values() if route.method]
        self._typed_by_request = {method.input_type.full_name: route for route, method in typed}
        methods = [Method.of(method, self._typed(route)) for route, method in typed]
        service = GATEWAY_SERVICE.methods_by_name
        methods += [
            Method.of(service["Publish"], self._publish),
            Method.of(service["PublishBatch"], self._publish_batch, {"entries": max_batch_entries}),
            Method.of(service["PublishStream"], self._publish_stream),
            Method.of(service["ListTaskTypes"], self._list_task_types),
            Method.of(service["GetTaskTypeSchema"], self._get_task_type_schema),
        ]
        self._methods = {method.full_name: apply(method, middlewares) for method in methods}

    def __getitem__(self, name: str) -> Method:
        return self._methods[name]

    def __iter__(self) -> Any:
        return iter(self._methods)

    def __len__(self) -> int:
        return len(self._methods)

    @property
    def service_names(self) -> list[str]:
        return sorted({method.service for method in self._methods.values()})

    # --- one task -------------------------------------------------------------------------

    def _typed(self, route: Route) -> UnaryHandler:
        assert route.method is not None
        response_type = message_factory.GetMessageClass(route.method.output_type)

        async def handle(request: Any, context: CallContext) -> Message:
            task = _typed_task(route, request)
            return response_type(task_key=await self._submit(task, context))

        return handle

    async def _publish(
        self, request: gateway_pb2.PublishRequest, context: CallContext
    ) -> gateway_pb2.PublishResponse:
        return gateway_pb2.PublishResponse(
            task_key=await self._submit(_generic_task(request), context)
        )

    async def _submit(self, task: TaskRequest, context: CallContext) -> str:
        accepted = await self._ingestor.submit(task, context)
        return accepted.task_key

    # --- many tasks -----------------------------------------------------------------------

    async def _publish_batch(
        self, request: gateway_pb2.PublishBatchRequest, context: CallContext
    ) -> gateway_pb2.PublishBatchResponse:
        if len(request.entries) > self._max_batch_entries:
            raise too_many_items("entries", self._max_batch_entries, len(request.entries))
        window = self._open_window(context)
        outcomes: list[Outcome] = []
        try:
            slice_started = time.perf_counter()
            for index, entry in enumerate(request.entries):
                while window.full:
                    outcomes += await window.take()
                    slice_started = time.perf_counter()
                if time.perf_counter() - slice_started > _TIME_SLICE_SECONDS:
                    # Entries that settle at once (invalid, refused) never wait for the
                    # broker: without this a batch would run in one turn of the event loop.
                    await asyncio.sleep(0)
                    slice_started = time.perf_counter()
                window.add(index, self._entry_task(entry))
            window.finish()
            while settled := await window.take():
                outcomes += settled
        finally:
            window.close()
        outcomes.sort(key=lambda outcome: outcome[0])
        return gateway_pb2.PublishBatchResponse(results=[_result(*o) for o in outcomes])

    async def _publish_stream(
        self, requests: AsyncIterator[gateway_pb2.PublishStreamRequest], context: CallContext
    ) -> AsyncIterator[gateway_pb2.PublishStreamResponse]:
        """Answer tasks as their confirms arrive; read no further while the window is full."""
        window = self._open_window(context)
        failure: list[GatewayError] = []

        async def read() -> None:
            index = 0
            try:
                async for request in requests:
                    window.add(index, self._entry_task(request.entry))
                    index += 1
                    await window.room()
            except GatewayError as error:  # a request that does not parse ends the stream
                failure.append(error)
            finally:
                window.finish()

        reader = asyncio.create_task(read())
        try:
            # Tasks confirmed together are answered together: one message, and one write.
            while settled := await window.take():
                yield gateway_pb2.PublishStreamResponse(results=[_result(*o) for o in settled])
            await reader
            if failure:
                raise failure[0]
        finally:
            reader.cancel()
            window.close()

    def _open_window(self, context: CallContext) -> PublishWindow:
        return PublishWindow(self._ingestor, context, size=self._window)

    def _entry_task(self, entry: gateway_pb2.TaskEntry) -> TaskRequest | GatewayError:
        """The entry's task, or what is wrong with the entry (it fails alone)."""
        try:
            return self._parse_entry(entry)
        except GatewayError as error:
            return error

    def _parse_entry(self, entry: gateway_pb2.TaskEntry) -> TaskRequest:
        kind = entry.WhichOneof("task")
        if kind == "publish":
            return _generic_task(entry.publish)
        if kind != "typed":
            raise invalid_argument([FieldViolation("task", "set publish or typed")])
        violations = entry_violations(entry)
        if violations:  # the JSON of a REST batch's entry that did not parse: it fails alone
            raise invalid_argument(violations)
        type_name = entry.typed.TypeName()
        route = self._typed_by_request.get(type_name)
        if route is None:
            known = ", ".join(sorted(self._typed_by_request))
            description = f"{clip(type_name)!r} is no typed request; known: {known}"
            raise invalid_argument([FieldViolation("typed", description)])
        assert route.method is not None
        request_type = message_factory.GetMessageClass(route.method.input_type)
        try:
            request = request_type.FromString(entry.typed.value)
        except DecodeError as exc:
            raise invalid_argument([FieldViolation("typed", str(exc))]) from None
        return _typed_task(route, request)

    # --- the catalog ----------------------------------------------------------------------

    async def _list_task_types(
        self, request: gateway_pb2.ListTaskTypesRequest, context: CallContext
    ) -> gateway_pb2.ListTaskTypesResponse:
        routes = self._ingestor.routes
        visible = self._visible
        return gateway_pb2.ListTaskTypesResponse(
            task_types=[
                _catalog_entry(routes[name])
                for name in routes.task_types
                if visible is None or visible(context, name)
            ]
        )

    async def _get_task_type_schema(
        self, request: gateway_pb2.GetTaskTypeSchemaRequest, context: CallContext
    ) -> gateway_pb2.GetTaskTypeSchemaResponse:
        routes, visible = self._ingestor.routes, self._visible
        shown = None if visible is None else lambda t: visible(context, t)
        if request.task_type not in routes or (shown is not None and not shown(request.task_type)):
            # A resource that is not there (for this caller), not a bad argument.
            raise GatewayError(Code.NOT_FOUND, routes.unknown(request.task_type, shown).message)
        response = gateway_pb2.GetTaskTypeSchemaResponse(task_type=request.task_type)
        response.json_schema.update(self._payload_schemas[request.task_type])
        return response


def _result(index: int, outcome: Accepted | GatewayError) -> gateway_pb2.TaskResult:
    if isinstance(outcome, GatewayError):
        return gateway_pb2.TaskResult(index=index, error=to_status_proto(outcome))
    return gateway_pb2.TaskResult(index=index, task_key=outcome.task_key)


def _typed_task(route: Route, request: Any) -> TaskRequest:
    return TaskRequest(
        user_id=request.user_id,
        task_type=route.task_type,
        payload=request.payload if request.HasField("payload") else None,
        idempotency_key=request.idempotency_key,
    )


def _generic_task(request: gateway_pb2.PublishRequest) -> TaskRequest:
    return TaskRequest(
        user_id=request.user_id,
        task_type=request.task_type,
        payload=struct_to_python(request.payload) if request.HasField("payload") else None,
        idempotency_key=request.idempotency_key,
    )


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


def struct_to_python(struct: struct_pb2.Struct) -> dict[str, Any]:
    """A Struct as plain JSON values, integral numbers as ints (`json_number`)."""
    return {key: _value_to_python(value) for key, value in struct.fields.items()}


def _value_to_python(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return struct_to_python(value.struct_value)
    if kind == "list_value":
        return [_value_to_python(item) for item in value.list_value.values]
    if kind == "number_value":
        return json_number(value.number_value)
    if kind in ("string_value", "bool_value"):
        return getattr(value, kind)
    return None
