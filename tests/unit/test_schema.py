"""gateway.contracts.schema: JSON Schema of messages as their proto3 JSON mapping carries them."""

from __future__ import annotations

import json
from typing import Any

import pytest
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import Descriptor
from jsonschema import Draft202012Validator
from taskgateway_api.images.v1 import images_pb2
from taskgateway_api.taskgateway.v1 import gateway_pb2

from gateway.contracts.comments import Comments
from gateway.contracts.files import CONTRACT_FILES
from gateway.contracts.schema import COMPONENTS_REF_PREFIX, SchemaBuilder, message_schema
from tests.unit.protos import compile_proto

LEGACY_EXAMPLE = {
    "model": "openrouter::google/gemini-3.1-flash-image-preview",
    "prompt": "post-apocalyptic warrior standing in a ruined city",
    "image_name": "warrior",
}

SAMPLE = """\
syntax = "proto3";

package sample.v1;

import "google/protobuf/any.proto";
import "google/protobuf/duration.proto";
import "google/protobuf/struct.proto";
import "google/protobuf/timestamp.proto";
import "google/protobuf/wrappers.proto";
import "taskgateway/v1/options.proto";

// A tree node.
message Node {
  // A colour.
  enum Color {
    COLOR_UNSPECIFIED = 0;
    COLOR_RED = 1;
  }
  // The node's name.
  string name = 1;
  // Children, recursively.
  repeated Node children = 2;
  int64 big = 3;
  uint64 small_big = 4 [(taskgateway.v1.field) = {min: 1 max: 10}];
  map<string, Leaf> leaves = 5;
  map<int32, string> by_number = 6;
  Color color = 7;
  bytes blob = 8 [(taskgateway.v1.field).max_len = 6];
  double ratio = 9 [(taskgateway.v1.field) = {min: 0.5 max: 2.5}];
  bool flag = 10;
  google.protobuf.Struct extra = 11;
  google.protobuf.Value anything = 12;
  google.protobuf.ListValue list = 13;
  google.protobuf.Timestamp at = 14;
  google.protobuf.Duration after = 15;
  google.protobuf.UInt32Value maybe = 16;
  google.protobuf.Any detail = 17;
  oneof target {
    string url = 18;
    Leaf leaf = 19;
  }
  optional int32 level = 20 [(taskgateway.v1.field).required = true];
  repeated string labels = 21 [(taskgateway.v1.field) = {required: true max_len: 3}];
  int32 count = 22 [(taskgateway.v1.field).required = true];
}

// A leaf, pointing back at its node.
message Leaf {
  // The node holding the leaf.
  Node parent = 1;
  float weight = 2;
}
"""


def _validator(schema: dict[str, Any]) -> Draft202012Validator:
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


@pytest.fixture(scope="module")
def comments() -> Comments:
    return Comments.load()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Descriptor:
    file, _ = compile_proto(tmp_path_factory.mktemp("sample"), SAMPLE)
    return file.message_types_by_name["Node"]


def _valid_node(**fields: Any) -> dict[str, Any]:
    return {"level": 0, "labels": ["a"], "count": 1, **fields}


def test_generate_payload_schema_accepts_the_legacy_example(comments: Comments) -> None:
    """The images.generate payload schema is valid draft 2020-12 and accepts the legacy example
    and one with every optional field."""
    validator = _validator(message_schema(images_pb2.GeneratePayload.DESCRIPTOR, comments))

    validator.validate(LEGACY_EXAMPLE)
    validator.validate(
        {**LEGACY_EXAMPLE, "negative_prompt": "", "width": 1024, "height": 64, "seed": 0}
    )


@pytest.mark.parametrize(
    "payload",
    [
        {key: value for key, value in LEGACY_EXAMPLE.items() if key != "prompt"},
        {**LEGACY_EXAMPLE, "prompt": ""},
        {**LEGACY_EXAMPLE, "unknown": 1},
        {**LEGACY_EXAMPLE, "imageName": "warrior"},
        {**LEGACY_EXAMPLE, "width": 10},
        {**LEGACY_EXAMPLE, "height": 8193},
        {**LEGACY_EXAMPLE, "seed": -1},
        {**LEGACY_EXAMPLE, "width": "1024"},
        {**LEGACY_EXAMPLE, "model": "m" * 257},
    ],
    ids=[
        "missing-prompt",
        "empty-prompt",
        "unknown-field",
        "camel-case",
        "width-below-min",
        "height-above-max",
        "negative-uint32",
        "string-width",
        "model-too-long",
    ],
)
def test_generate_payload_schema_rejects_what_the_gateway_rejects(
    payload: dict[str, Any], comments: Comments
) -> None:
    """Missing or empty required fields, unknown fields, out-of-range numbers and over-long
    strings fail the schema, as they fail the gateway's field rules."""
    validator = _validator(message_schema(images_pb2.GeneratePayload.DESCRIPTOR, comments))

    assert not validator.is_valid(payload)


def test_schema_documents_names_types_rules_and_comments(comments: Comments) -> None:
    """The schema is titled by the full name, described by the comments, keyed by proto names,
    closed, and carries the field rules as keywords."""
    schema = message_schema(images_pb2.GeneratePayload.DESCRIPTOR, comments)

    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["title"] == "images.v1.GeneratePayload"
    assert schema["description"] == "The parameters of an images.generate task."
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False
    assert schema["required"] == ["model", "prompt", "image_name"]
    assert list(schema["properties"]) == [
        "model",
        "prompt",
        "image_name",
        "negative_prompt",
        "width",
        "height",
        "seed",
    ]
    assert schema["properties"]["model"]["maxLength"] == 256
    assert schema["properties"]["width"] | {"description": ""} == {
        "type": "integer",
        "format": "uint32",
        "minimum": 64,
        "maximum": 8192,
        "description": "",
    }
    assert schema["properties"]["seed"]["maximum"] == 4294967295
    assert schema["properties"]["image_name"]["description"] == (
        'The name the image is stored under, e.g. "warrior".'
    )


def test_every_typed_payload_schema_is_valid_and_plain_data(comments: Comments) -> None:
    """Each contract message gives a valid draft 2020-12 schema that survives a JSON round trip
    unchanged, and the same schema every time."""
    for file in CONTRACT_FILES:
        for message in file.message_types_by_name.values():
            schema = message_schema(message, comments)
            Draft202012Validator.check_schema(schema)
            assert json.loads(json.dumps(schema)) == schema
            assert message_schema(message, comments) == schema


def test_struct_payload_is_any_object(comments: Comments) -> None:
    """A google.protobuf.Struct field (Publish's payload) is any JSON object."""
    schema = message_schema(gateway_pb2.PublishRequest.DESCRIPTOR, comments)
    validator = _validator(schema)

    assert schema["properties"]["payload"]["type"] == "object"
    validator.validate({"user_id": "1", "task_type": "t", "payload": {"any": ["thing", 1]}})
    assert not validator.is_valid({"payload": []})


def test_recursive_messages_refer_to_definitions(node: Descriptor) -> None:
    """Nested messages live under $defs and are referenced, the root as "#", so recursion ends."""
    schema = message_schema(node)

    assert schema["properties"]["children"] == {"type": "array", "items": {"$ref": "#"}}
    assert list(schema["$defs"]) == ["sample.v1.Leaf"]
    leaf = schema["$defs"]["sample.v1.Leaf"]
    assert leaf["properties"]["parent"]["$ref"] == "#"
    assert schema["properties"]["leaves"]["additionalProperties"] == {
        "$ref": "#/$defs/sample.v1.Leaf"
    }


def test_proto_json_of_a_full_message_validates(node: Descriptor) -> None:
    """What protobuf's JSON printer writes for a message with every kind of field (64-bit
    strings, maps, enums, bytes, well-known types, wrappers) is valid against its schema."""
    message = message_factory.GetMessageClass(node)()
    json_format.ParseDict(
        {
            "name": "root",
            "children": [{"name": "child", "level": 1, "labels": ["b"], "count": 2}],
            "big": "-9223372036854775808",
            "small_big": "10",
            "leaves": {
                "x": {
                    "weight": 1.5,
                    "parent": {"name": "up", "level": 5, "labels": ["c"], "count": 1},
                }
            },
            "by_number": {"-3": "minus three"},
            "color": "COLOR_RED",
            "blob": "AAECAwQF",
            "ratio": 2.5,
            "flag": True,
            "extra": {"k": [1, None]},
            "anything": None,
            "list": [1, "two"],
            "at": "2025-01-02T03:04:05.5Z",
            "after": "1.5s",
            "maybe": 7,
            "detail": {"@type": "type.googleapis.com/google.protobuf.Duration", "value": "2s"},
            "leaf": {"weight": 0},
            "level": 0,
            "labels": ["abc"],
            "count": 3,
        },
        message,
    )
    printed = json_format.MessageToDict(message, preserving_proto_field_name=True)

    _validator(message_schema(node)).validate(printed)


@pytest.mark.parametrize(
    ("fields", "valid"),
    [
        ({"big": 12}, True),
        ({"big": "12"}, True),
        ({"big": "1.5"}, False),
        ({"small_big": 0}, False),
        ({"small_big": 11}, False),
        ({"by_number": {"x": "not a number"}}, False),
        ({"color": "COLOR_BLUE"}, False),
        ({"blob": "AAECAwQFBgc="}, False),
        ({"ratio": 0.4}, False),
        ({"at": "yesterday"}, False),
        ({"after": "5 minutes"}, False),
        ({"maybe": -1}, False),
        ({"detail": {"@type": 1}}, False),
        ({"url": "u", "leaf": {}}, False),
        ({"url": "u"}, True),
        ({"labels": []}, False),
        ({"labels": ["abcd"]}, False),
        ({"count": 0}, False),
        ({"level": 2147483648}, False),
    ],
)
def test_schema_follows_proto_json_and_rules(
    node: Descriptor, fields: dict[str, Any], valid: bool
) -> None:
    """64-bit integers as strings or integers, bounded map keys, enum names, base64 length,
    formats, wrappers, Any's @type, oneof exclusivity and required/max_len/min/max rules."""
    validator = _validator(message_schema(node))

    assert validator.is_valid(_valid_node(**fields)) is valid


def test_required_optional_scalar_may_be_zero(node: Descriptor) -> None:
    """A required proto3 `optional` scalar must be present, but zero counts as present."""
    validator = _validator(message_schema(node))

    assert validator.is_valid(_valid_node(level=0))
    assert not validator.is_valid({"labels": ["a"], "count": 1})


def _components(descriptor: Descriptor, comments: Comments | None) -> dict[str, Any]:
    """The OpenAPI components a message brings, as openapi_document builds them."""
    builder = SchemaBuilder(COMPONENTS_REF_PREFIX, comments)
    builder.define(descriptor)
    return builder.definitions


def test_component_schemas_pull_in_every_referenced_message(node: Descriptor) -> None:
    """Component schemas define each requested message and everything it refers to, once,
    with refs into #/components/schemas/."""
    schemas = _components(node, None)

    assert list(schemas) == ["sample.v1.Leaf", "sample.v1.Node"]
    assert schemas["sample.v1.Node"]["properties"]["children"]["items"] == {
        "$ref": "#/components/schemas/sample.v1.Node"
    }
    assert schemas["sample.v1.Leaf"]["properties"]["parent"]["$ref"] == (
        "#/components/schemas/sample.v1.Node"
    )
    assert "$schema" not in schemas["sample.v1.Node"]


def test_component_and_standalone_schemas_agree(comments: Comments) -> None:
    """A component schema is the standalone schema without $schema and with refs re-pointed."""
    descriptor = gateway_pb2.ListTaskTypesResponse.DESCRIPTOR
    standalone = message_schema(descriptor, comments)
    components = _components(descriptor, comments)

    repointed = json.loads(json.dumps(components).replace("#/components/schemas/", "#/$defs/"))
    assert {key: value for key, value in standalone.items() if key not in ("$schema", "$defs")} == (
        repointed["taskgateway.v1.ListTaskTypesResponse"]
    )
    assert standalone["$defs"]["taskgateway.v1.TaskType"] == repointed["taskgateway.v1.TaskType"]
