"""The OpenAPI 3.1 document of the REST shim, generated from the contracts.

Built from the same `google.api.http` rules the shim routes by and the same proto comments the
task catalog uses, so the document cannot drift from what the gateway serves. Every RPC
operation lists every error status the shim can answer with, because REST clients of a task
gateway must tell "retry with the same idempotency key" (503, 504, 429) from "fix the request"
(400) without reading the code.

The document is plain data (json.dumps-able) and deterministic: the same contracts always give
the same bytes, so it can be cached, diffed and served as is.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any, cast

from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.rpc import status_pb2

from gateway.contracts.comments import Comments
from gateway.contracts.http_rules import HttpRule
from gateway.contracts.routing import Route, RouteTable
from gateway.contracts.schema import COMPONENTS_REF_PREFIX, SchemaBuilder
from gateway.contracts.validation import request_field_schemas
from gateway.errors import HTTP_ONLY_STATUS, STATUS, ConfigError

__all__ = ["ERROR_RESPONSES", "OPENAPI_VERSION", "openapi_document"]

OPENAPI_VERSION = "3.1.0"

_STATUS = "google.rpc.Status"
_OPERATIONS_TAG = "operations"

_DESCRIPTION = """\
Submits asynchronous tasks (image generation, video generation, …) to RabbitMQ. Every route \
below is transcoded onto the gateway's gRPC methods and runs the same validation, limits and \
logging. A 200 answer carries a `task_key` (`user_id:service_name:task_id`) and means that \
RabbitMQ confirmed the message: the broker took responsibility for the task, not that the task \
ran.

Bodies are JSON in protobuf's JSON mapping: proto field names (`image_name`) and lowerCamel \
names (`imageName`) are both accepted; answers use proto field names. Errors are the JSON form \
of `google.rpc.Status`: `{"code": 3, "message": "...", "details": [...]}`, where `code` is the \
gRPC status code and a `google.rpc.BadRequest` detail names each bad field.

Request headers the gateway honours:

- `Authorization`: `Bearer <token>`, the client's credentials when the gateway requires \
authentication (401 without a known token or client certificate; 403 for a task type or user_id \
the client may not publish).
- `Grpc-Metadata-<name>`: forwarded as call metadata `<name>`.
- `X-Request-Id`: forwarded as call metadata and logged with the request.
- `traceparent`, `tracestate`: W3C trace context; `traceparent` is copied into the published \
message's headers.
- `Grpc-Timeout`: the call's deadline in gRPC's format, 1 to 8 digits and a unit (`H` hours, \
`M` minutes, `S` seconds, `m` milliseconds, `u` microseconds, `n` nanoseconds), e.g. `5S` or \
`500m`, counted from when the request's headers arrive.

Send an `idempotency_key` with every task you may retry: the task id is then derived from \
(user_id, task type, key), so a retry after an unknown outcome (504, 499, a dropped connection) \
yields the same task key and downstream consumers can de-duplicate.
"""


def _error_responses() -> dict[int, tuple[str, str]]:
    """HTTP status -> (its components/responses name, when the gateway answers with it).

    Read from the one status table: every code the gateway documents, grouped by the HTTP
    status the shim gives it, then the statuses of the shim's own HTTP layer.
    """
    lines: dict[int, list[str]] = {}
    for row in STATUS.values():
        if row.doc:
            lines.setdefault(row.http_status, []).append(row.doc)
    for status, (_, doc) in HTTP_ONLY_STATUS.items():
        lines.setdefault(status, []).insert(0, doc)
    return {
        status: (_response_name(status), " ".join(lines[status]))
        for status in sorted(lines)
        if status >= 400
    }


def _response_name(status: int) -> str:
    if status == 499:  # nginx's, which grpc-gateway uses for CANCELLED; not in the RFCs
        return "ClientClosedRequest"
    return "".join(word.capitalize() for word in HTTPStatus(status).phrase.split())


ERROR_RESPONSES = _error_responses()

# Grpc-Timeout is described in the document's text rather than as a parameter: a deadline
# too short to meet is the caller's choice, and a generated client or fuzzer that sends one
# at random would read its 504 as a server fault.
_HEADER_PARAMETERS: dict[str, dict[str, Any]] = {
    "XRequestId": {
        "name": "X-Request-Id",
        "in": "header",
        "required": False,
        "description": "Forwarded as call metadata and logged with the request.",
        "schema": {"type": "string"},
    },
}


def openapi_document(
    rules: Sequence[HttpRule],
    comments: Comments,
    routes: RouteTable,
    *,
    title: str = "Task Gateway",
    version: str,
    item_limits: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the routes, the health probes and their schemas.

    `item_limits`: the most items a repeated request field may hold, by the field's full name
    (taskgateway.v1.PublishBatchRequest.entries), as the gateway is configured: `maxItems`.
    """
    builder = SchemaBuilder(COMPONENTS_REF_PREFIX, comments)
    paths: dict[str, dict[str, Any]] = {}
    tags: dict[str, str] = {}
    for rule, operation_id in zip(rules, _operation_ids(rules), strict=True):
        service = rule.method.containing_service
        tags.setdefault(service.full_name, comments.of(service.full_name))
        item = paths.setdefault(_openapi_path(rule.path), {})
        verb = rule.verb.lower()
        if verb in item:
            raise ConfigError(
                f"rpc {rule.method.full_name}: {rule.verb} {rule.path} has the same OpenAPI path "
                "as another route of that verb"
            )
        item[verb] = _operation(rule, operation_id, comments, builder)
    for path, item in _probes().items():
        if path in paths:
            raise ConfigError(f"a route of the contracts takes {path}, the gateway's own probe")
        paths[path] = item
    for rule in rules:
        request = rule.method.input_type
        if request.full_name in builder.definitions:
            _describe_task_request(builder, request, routes)
    for full_name, limit in (item_limits or {}).items():
        message, _, field = full_name.rpartition(".")
        definition = builder.definitions.get(message)
        if definition is not None and field in definition.get("properties", {}):
            definition["properties"][field]["maxItems"] = limit
    status_schema = _status_schema()
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": title, "version": version, "description": _DESCRIPTION},
        # Either: a gateway without authentication asks for nothing.
        "security": [{}, {"bearer": []}],
        "tags": [
            *(
                {"name": name, "description": text} if text else {"name": name}
                for name, text in tags.items()
            ),
            {"name": _OPERATIONS_TAG, "description": "Probes for orchestrators."},
        ],
        "paths": paths,
        "components": {
            "schemas": {**builder.definitions, _STATUS: status_schema},
            "responses": {
                name: {
                    "description": description,
                    "content": {
                        "application/json": {"schema": {"$ref": COMPONENTS_REF_PREFIX + _STATUS}}
                    },
                }
                for name, description in ERROR_RESPONSES.values()
            },
            "parameters": _HEADER_PARAMETERS,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A client's token, when the gateway requires authentication "
                    "(it may also know a client by its TLS certificate).",
                }
            },
        },
    }


def _describe_task_request(builder: SchemaBuilder, request: Descriptor, routes: RouteTable) -> None:
    """Add to a task request's schema the checks the gateway makes in code, not field rules.

    user_id, idempotency_key and task_type get their limits; user_id, task_type and a typed
    payload are required; and a generic request (task_type + free-form payload) says, per
    task type, which payload it takes, so that a schema-valid request is an accepted one.
    """
    schema = builder.definitions[request.full_name]
    properties = schema.get("properties", {})
    for name, keywords in request_field_schemas(routes.task_types).items():
        if name in properties:
            properties[name].update(keywords)
    payload = request.fields_by_name.get("payload")
    required = [name for name in ("user_id", "task_type") if name in properties]
    if payload is not None and payload.message_type is not None:
        if payload.message_type.full_name != "google.protobuf.Struct":
            required.append("payload")
        elif "task_type" in properties:
            schema["anyOf"] = [_task_variant(builder, route) for route in routes.values()]
    if required:
        schema["required"] = sorted({*schema.get("required", ()), *required})


def _task_variant(builder: SchemaBuilder, route: Route) -> dict[str, Any]:
    if route.payload_type is None:  # routed by configuration: forwarded untouched
        return {"properties": {"task_type": {"const": route.task_type}}}
    return {
        "properties": {
            "task_type": {"const": route.task_type},
            "payload": builder.reference(cast(Descriptor, route.payload_type.DESCRIPTOR)),
        },
        "required": ["payload"],
    }


def _status_schema() -> dict[str, Any]:
    schema = SchemaBuilder(COMPONENTS_REF_PREFIX).message(status_pb2.Status.DESCRIPTOR)
    # googleapis ships no source info for google.rpc, so its descriptions are written here.
    schema["description"] = (
        "The error answer, as grpc-gateway and Envoy's transcoder write it: the gRPC status "
        "code, a message naming the cause, and typed details."
    )
    properties = schema["properties"]
    properties["code"]["description"] = "The gRPC status code, e.g. 3 for INVALID_ARGUMENT."
    properties["message"]["description"] = "What went wrong, for a developer to read."
    properties["details"]["description"] = (
        "Typed details, e.g. a google.rpc.BadRequest with one entry per bad field."
    )
    return schema


def _operation(
    rule: HttpRule, operation_id: str, comments: Comments, builder: SchemaBuilder
) -> dict[str, Any]:
    method = rule.method
    comment = comments.of(method.full_name)
    request: Descriptor = method.input_type
    operation: dict[str, Any] = {
        "operationId": operation_id,
        "tags": [method.containing_service.full_name],
    }
    if comment:
        operation["summary"] = _summary(comment)
        operation["description"] = comment
    operation["parameters"] = [
        *(_path_parameter(request, variable, comments) for variable in rule.variables),
        *({"$ref": f"#/components/parameters/{name}"} for name in _HEADER_PARAMETERS),
    ]
    if rule.body:
        if rule.body == "*":
            schema = builder.reference(request)
            description = comments.of(request.full_name)
        else:
            schema = builder.field(request.fields_by_name[rule.body])
            description = schema.pop("description", "")
        body: dict[str, Any] = {
            "required": True,
            "content": {"application/json": {"schema": schema}},
        }
        if description:
            body["description"] = description
        operation["requestBody"] = body
    response: Descriptor = method.output_type
    operation["responses"] = {
        "200": {
            "description": comments.of(response.full_name) or "OK",
            "content": {"application/json": {"schema": builder.reference(response)}},
        },
        **{
            str(status): {"$ref": f"#/components/responses/{name}"}
            for status, (name, _) in ERROR_RESPONSES.items()
        },
    }
    return operation


def _path_parameter(request: Descriptor, variable: str, comments: Comments) -> dict[str, Any]:
    parameter: dict[str, Any] = {
        "name": variable,
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
    }
    if description := comments.of(_field(request, variable).full_name):
        parameter["description"] = description
    return parameter


def _field(request: Descriptor, path: str) -> FieldDescriptor:
    """The field a (dotted) path variable names; http_rules has checked that it exists."""
    message = request
    *parents, last = path.split(".")
    for name in parents:
        nested = message.fields_by_name[name].message_type
        assert nested is not None  # http_rules checked every parent is a message
        message = nested
    return message.fields_by_name[last]


def _operation_ids(rules: Sequence[HttpRule]) -> list[str]:
    """One unique id per rule: <Service>_<Method>, package-qualified when two services share a
    name, and numbered (_2, _3, ...) for an RPC's additional bindings."""
    methods: dict[str, set[str]] = {}
    for rule in rules:
        methods.setdefault(_short_id(rule.method), set()).add(rule.method.full_name)
    ids: list[str] = []
    taken: set[str] = set()
    for rule in rules:
        base = _short_id(rule.method)
        if len(methods[base]) > 1:
            base = rule.method.full_name.replace(".", "_")
        candidate, counter = base, 1
        while candidate in taken:
            counter += 1
            candidate = f"{base}_{counter}"
        taken.add(candidate)
        ids.append(candidate)
    return ids


def _short_id(method: MethodDescriptor) -> str:
    return f"{method.containing_service.name}_{method.name}"


def _openapi_path(template: str) -> str:
    # OpenAPI has no multi-segment variables: "{name=shelves/*}" is documented as "{name}".
    return re.sub(r"\{([^}=]+)=[^}]*\}", r"{\1}", template)


def _summary(comment: str) -> str:
    """The comment's first sentence, on one line: proto comments wrap mid-sentence."""
    paragraph = " ".join(comment.split("\n\n", 1)[0].split())
    end = re.search(r"\.(\s|$)", paragraph)
    return paragraph[: end.start() + 1] if end else paragraph


def _probes() -> dict[str, dict[str, Any]]:
    def status_object(status: str, **extra: Any) -> dict[str, Any]:
        return {
            "type": "object",
            "properties": {"status": {"const": status}, **extra},
            "required": ["status", *extra],
        }

    def answer(description: str, schema: dict[str, Any]) -> dict[str, Any]:
        return {"description": description, "content": {"application/json": {"schema": schema}}}

    return {
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "tags": [_OPERATIONS_TAG],
                "summary": "Liveness: the process is up.",
                "responses": {"200": answer("The process is alive.", status_object("ok"))},
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "tags": [_OPERATIONS_TAG],
                "summary": "Readiness: the broker is connected and the exchanges are present.",
                "responses": {
                    "200": answer("Ready to accept tasks.", status_object("ready")),
                    "503": answer(
                        "Not ready: tasks would fail (broker away, an exchange missing, or "
                        "shutting down); the reason says which.",
                        status_object("not ready", reason={"type": "string"}),
                    ),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "tags": [_OPERATIONS_TAG],
                "summary": "Prometheus metrics of the whole gateway, every worker included.",
                "responses": {
                    "200": {
                        "description": "The Prometheus text exposition format.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
    }
