"""gateway.contracts.openapi: the OpenAPI 3.1 document generated from the contracts."""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.api import annotations_pb2
from google.protobuf import descriptor_pb2, descriptor_pool, json_format
from openapi_spec_validator import validate

from gateway.contracts.comments import Comments
from gateway.contracts.files import CONTRACT_FILES
from gateway.contracts.http_rules import HttpRule, http_rules
from gateway.contracts.openapi import openapi_document
from gateway.contracts.routing import RouteTable, build_route_table
from gateway.errors import HTTP_ONLY_STATUS, STATUS, Code, ConfigError

# Every error status the gateway and its shim can answer with.
SOURCE = Path(__file__).resolve().parents[2] / "src" / "gateway"


def raised_codes() -> set[Code]:
    """The codes the gateway's source answers or logs with: every `Code.X` outside the table."""
    found = set()
    for path in SOURCE.rglob("*.py"):
        if path.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "Code"
            ):
                found.add(Code[node.attr])
    return found - {Code.OK}


# What the shim answers: the HTTP status of each code the source raises, and its own statuses.
ERROR_STATUSES = {str(STATUS[code].http_status) for code in raised_codes()} | {
    str(status) for status in HTTP_ONLY_STATUS
}
STATUS_REF = "#/components/schemas/google.rpc.Status"
VERBS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")


ROUTES = build_route_table(CONTRACT_FILES, [])


@pytest.fixture(scope="module")
def comments() -> Comments:
    return Comments.load()


@pytest.fixture(scope="module")
def document(comments: Comments) -> dict[str, Any]:
    return openapi_document(http_rules(CONTRACT_FILES), comments, ROUTES, version="1.2.3")


def _operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for verb in VERBS:
            if verb in item:
                yield path, verb, item[verb]


def _resolve(document: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target: Any = document
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def test_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    """The generated document passes openapi-spec-validator as OpenAPI 3.1.0."""
    assert document["openapi"] == "3.1.0"
    assert document["info"]["title"] == "Task Gateway"
    assert document["info"]["version"] == "1.2.3"

    validate(document)


def test_document_is_deterministic_plain_data(comments: Comments) -> None:
    """Two builds serialise to the same JSON, and every $ref points into the document."""
    first = openapi_document(http_rules(CONTRACT_FILES), comments, ROUTES, version="1")
    second = openapi_document(http_rules(CONTRACT_FILES), comments, ROUTES, version="1")

    assert json.dumps(first) == json.dumps(second)
    for ref in set(_refs(first)):
        assert _resolve(first, {"$ref": ref}), ref


def test_every_route_is_an_operation_of_its_rpc(document: dict[str, Any]) -> None:
    """Each annotated route appears under its path and verb, with operationId <Service>_<Method>
    and its service as tag; the probes are there too."""
    operations = {
        (verb.upper(), path): (operation["operationId"], operation["tags"])
        for path, verb, operation in _operations(document)
    }

    assert operations == {
        ("POST", "/api/v1/broker/publish"): (
            "TaskGatewayService_Publish",
            ["taskgateway.v1.TaskGatewayService"],
        ),
        ("POST", "/api/v1/broker/publish-batch"): (
            "TaskGatewayService_PublishBatch",
            ["taskgateway.v1.TaskGatewayService"],
        ),
        ("GET", "/api/v1/task-types"): (
            "TaskGatewayService_ListTaskTypes",
            ["taskgateway.v1.TaskGatewayService"],
        ),
        ("GET", "/api/v1/task-types/{task_type}/schema"): (
            "TaskGatewayService_GetTaskTypeSchema",
            ["taskgateway.v1.TaskGatewayService"],
        ),
        ("POST", "/api/v1/images/generate"): (
            "ImagesService_Generate",
            ["images.v1.ImagesService"],
        ),
        ("POST", "/api/v1/images/edit"): ("ImagesService_Edit", ["images.v1.ImagesService"]),
        ("POST", "/api/v1/videos/generate"): (
            "VideosService_Generate",
            ["videos.v1.VideosService"],
        ),
        ("POST", "/api/v1/videos/animate"): ("VideosService_Animate", ["videos.v1.VideosService"]),
        ("GET", "/healthz"): ("healthz", ["operations"]),
        ("GET", "/readyz"): ("readyz", ["operations"]),
        ("GET", "/metrics"): ("metrics", ["operations"]),
    }


def test_operation_ids_are_unique(document: dict[str, Any]) -> None:
    """No two operations share an operationId."""
    ids = [operation["operationId"] for _, _, operation in _operations(document)]

    assert len(ids) == len(set(ids))


def test_every_rpc_operation_documents_every_error(document: dict[str, Any]) -> None:
    """Every RPC operation lists each error status the gateway can give, each described and
    answered with google.rpc.Status JSON."""
    for path, verb, operation in _operations(document):
        if "operations" in operation["tags"]:
            continue
        responses = operation["responses"]
        assert set(responses) >= ERROR_STATUSES, (verb, path)
        for status in ERROR_STATUSES:
            response = _resolve(document, responses[status])
            assert response["description"], (verb, path, status)
            schema = response["content"]["application/json"]["schema"]
            assert schema == {"$ref": STATUS_REF}, (verb, path, status)


def test_documented_errors_are_exactly_those_the_gateway_answers(document: dict[str, Any]) -> None:
    """The error statuses of an operation are those of the codes the source raises, no more."""
    publish = document["paths"]["/api/v1/broker/publish"]["post"]

    assert set(publish["responses"]) - {"200"} == ERROR_STATUSES
    assert {"400", "429", "503", "504"} <= ERROR_STATUSES  # the derivation found the usual ones


def test_error_descriptions_say_when_to_retry(document: dict[str, Any]) -> None:
    """The timeout answer explains the unknown outcome and the retry with the same key."""
    publish = document["paths"]["/api/v1/broker/publish"]["post"]
    timeout = _resolve(document, publish["responses"]["504"])["description"]

    assert "unknown" in timeout
    assert "idempotency_key" in timeout


def test_status_schema_is_the_rpc_status_json(document: dict[str, Any]) -> None:
    """google.rpc.Status is an object with an integer code, a string message and typed details."""
    status = document["components"]["schemas"]["google.rpc.Status"]

    assert status["properties"]["code"]["type"] == "integer"
    assert status["properties"]["message"]["type"] == "string"
    details = status["properties"]["details"]
    assert details["type"] == "array"
    assert details["items"]["properties"]["@type"] == {"type": "string"}


def test_operations_take_their_text_from_the_comments(document: dict[str, Any]) -> None:
    """Summary is the method comment's first sentence, description the whole comment."""
    publish = document["paths"]["/api/v1/broker/publish"]["post"]
    generate = document["paths"]["/api/v1/images/generate"]["post"]

    assert publish["summary"] == (
        "Publishes one task and answers with its task key once RabbitMQ has confirmed the message."
    )
    assert publish["description"].startswith("Publishes one task and answers with its task key")
    assert publish["description"].endswith("identical messages.")
    assert generate["summary"] == "Generates an image from a text prompt."
    assert generate["description"] == "Generates an image from a text prompt."


def test_bodies_responses_and_path_parameters(document: dict[str, Any]) -> None:
    """A body "*" route requires its request message as JSON and answers its response message;
    a path variable is a required string parameter; GET routes take no body."""
    publish = document["paths"]["/api/v1/broker/publish"]["post"]
    body = publish["requestBody"]
    schema_route = document["paths"]["/api/v1/task-types/{task_type}/schema"]["get"]

    assert body["required"] is True
    assert body["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/taskgateway.v1.PublishRequest"
    }
    assert publish["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/taskgateway.v1.PublishResponse"
    }
    assert "requestBody" not in schema_route
    (parameter,) = [p for p in schema_route["parameters"] if p.get("in") == "path"]
    assert parameter["name"] == "task_type"
    assert parameter["required"] is True
    assert parameter["schema"] == {"type": "string"}
    assert parameter["description"] == 'The task type, e.g. "images.generate".'


def test_components_hold_every_message_the_routes_use(document: dict[str, Any]) -> None:
    """Request, response and payload messages are component schemas, with their rules."""
    schemas = document["components"]["schemas"]

    for name in (
        "images.v1.GenerateRequest",
        "images.v1.GeneratePayload",
        "videos.v1.AnimatePayload",
        "taskgateway.v1.TaskType",
        "google.rpc.Status",
    ):
        assert name in schemas, name
    assert schemas["images.v1.GenerateRequest"]["properties"]["payload"]["$ref"] == (
        "#/components/schemas/images.v1.GeneratePayload"
    )
    assert schemas["images.v1.GeneratePayload"]["required"] == ["model", "prompt", "image_name"]


def test_probes_are_documented(document: dict[str, Any]) -> None:
    """/healthz answers 200 ok; /readyz answers 200 ready or 503 not ready with a reason."""
    healthz = document["paths"]["/healthz"]["get"]["responses"]
    readyz = document["paths"]["/readyz"]["get"]["responses"]

    def schema(response: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = response["content"]["application/json"]["schema"]
        return result

    assert schema(healthz["200"])["properties"]["status"] == {"const": "ok"}
    assert schema(readyz["200"])["properties"]["status"] == {"const": "ready"}
    not_ready = schema(readyz["503"])
    assert not_ready["properties"]["status"] == {"const": "not ready"}
    assert not_ready["properties"]["reason"] == {"type": "string"}
    assert not_ready["required"] == ["status", "reason"]


def test_description_names_the_honoured_headers(document: dict[str, Any]) -> None:
    """The document describes the request headers the shim honours, Grpc-Timeout's format too."""
    description = document["info"]["description"]

    for header in ("Authorization", "Grpc-Metadata-", "X-Request-Id", "Grpc-Timeout", "500m"):
        assert header in description


def _rules(*services: tuple[str, str, dict[str, Any]]) -> list[HttpRule]:
    """Rules of one-method services (package, service, http option), in one private pool."""
    pool = descriptor_pool.DescriptorPool()
    files = []
    for package, service, option in services:
        proto = descriptor_pb2.FileDescriptorProto(
            name=f"{package}/{service}.proto", package=package, syntax="proto3"
        )
        proto.message_type.add(name=f"{service}Request")
        proto.message_type.add(name=f"{service}Response")
        method = proto.service.add(name=service).method.add(
            name="Run",
            input_type=f".{package}.{service}Request",
            output_type=f".{package}.{service}Response",
        )
        json_format.ParseDict(option, method.options.Extensions[annotations_pb2.http])
        pool.Add(proto)
        files.append(pool.FindFileByName(proto.name))
    return http_rules(files)


def test_operation_ids_stay_unique_for_bindings_and_namesakes() -> None:
    """Additional bindings get numbered ids and same-named services in two packages get
    package-qualified ones, so the document stays valid."""
    rules = _rules(
        ("one.v1", "JobService", {"post": "/v1/jobs", "additionalBindings": [{"put": "/v1/job"}]}),
        ("two.v1", "JobService", {"post": "/v2/jobs"}),
        ("two.v1", "OtherService", {"get": "/v2/other"}),
    )
    document = openapi_document(rules, Comments([]), RouteTable([]), version="1")

    ids = [operation["operationId"] for _, _, operation in _operations(document)]
    assert ids == [
        "one_v1_JobService_Run",
        "one_v1_JobService_Run_2",
        "two_v1_JobService_Run",
        "OtherService_Run",
        "healthz",
        "readyz",
        "metrics",
    ]
    validate(document)


def test_route_on_a_probe_path_stops_start_up() -> None:
    """A contract route on /healthz would shadow the probe: ConfigError."""
    rules = _rules(("one.v1", "HealthService", {"get": "/healthz"}))

    with pytest.raises(ConfigError, match="/healthz"):
        openapi_document(rules, Comments([]), RouteTable([]), version="1")


def test_task_requests_carry_the_checks_made_in_code(document: dict[str, Any]) -> None:
    """user_id limits, required fields and the known task types are in the request schemas."""
    schemas = document["components"]["schemas"]
    typed = schemas["images.v1.GenerateRequest"]
    generic = schemas["taskgateway.v1.PublishRequest"]

    assert typed["required"] == ["payload", "user_id"]
    assert typed["properties"]["user_id"]["maxLength"] == 128
    assert typed["properties"]["idempotency_key"]["maxLength"] == 256
    assert generic["required"] == ["task_type", "user_id"]
    assert generic["properties"]["task_type"]["enum"] == list(ROUTES.task_types)
    pattern = re.compile(generic["properties"]["user_id"]["pattern"])
    assert pattern.match("user-1")
    assert not pattern.match("a:b")
    assert not pattern.match("a\nb")


def test_generic_publish_names_the_payload_of_each_task_type(document: dict[str, Any]) -> None:
    """PublishRequest says per task type which payload schema applies, as the gateway checks."""
    variants = document["components"]["schemas"]["taskgateway.v1.PublishRequest"]["anyOf"]
    by_type = {v["properties"]["task_type"]["const"]: v for v in variants}

    assert by_type["images.generate"]["properties"]["payload"] == {
        "$ref": "#/components/schemas/images.v1.GeneratePayload"
    }
    assert by_type["videos.animate"]["required"] == ["payload"]
    assert sorted(by_type) == list(ROUTES.task_types)
