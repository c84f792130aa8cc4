"""JSON into protobuf: a value of the wrong JSON kind is named by its field, in JSON's words."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from google.protobuf import message_factory
from google.protobuf.message import Message

from gateway.contracts.jsonmapping import parse_json_object
from gateway.errors import FieldViolation
from tests.unit.protos import compile_proto

SAMPLE = """
syntax = "proto3";
package sample.v1;
import "google/protobuf/struct.proto";

message Inner { string name = 1; }
enum Color { COLOR_UNSPECIFIED = 0; COLOR_RED = 1; }

message Sample {
  string text = 1;
  bool flag = 2;
  int64 count = 3;
  double ratio = 4;
  Color color = 5;
  repeated string tags = 6;
  map<string, int32> sizes = 7;
  Inner inner = 8;
  repeated Inner inners = 9;
  google.protobuf.Struct extra = 10;
  google.protobuf.ListValue items = 11;
  google.protobuf.Value anything = 12;
}
"""


@pytest.fixture
def sample(tmp_path: Path) -> type[Message]:
    file, _ = compile_proto(tmp_path, SAMPLE)
    return message_factory.GetMessageClass(file.message_types_by_name["Sample"])


ACCEPTED: list[dict[str, Any]] = [
    {"text": "t", "flag": False, "count": 3, "ratio": 0.5, "color": "COLOR_RED"},
    {"count": "9007199254740993", "ratio": "NaN", "color": 1},  # proto3 JSON's string forms
    {"tags": ["a", "b"], "sizes": {"s": 1}, "inner": {"name": "n"}, "inners": [{"name": "m"}]},
    {"extra": {"a": None, "b": [1, "x"]}, "items": [None, 1], "anything": None},
]


@pytest.mark.parametrize("obj", ACCEPTED)
def test_values_of_the_right_kind_are_parsed(sample: type[Message], obj: dict[str, Any]) -> None:
    message = sample()

    assert parse_json_object(obj, message) == []
    assert message.ListFields(), "the values reached the message"


INTEGER = "must be an integer (a number, or a string of digits)"
REJECTED: list[tuple[dict[str, Any], str, str]] = [
    ({"text": 1}, "text", "must be a string, got a number"),
    ({"text": {"a": 1}}, "text", "must be a string, got an object"),
    ({"flag": "true"}, "flag", "must be true or false, got a string"),
    ({"count": True}, "count", f"{INTEGER}, got a boolean"),
    ({"count": "ten"}, "count", f"{INTEGER}, got a string"),
    ({"ratio": [1]}, "ratio", "must be a number, got an array"),
    ({"color": False}, "color", "must be an enum value's name or number, got a boolean"),
    ({"tags": "a"}, "tags", "must be an array, got a string"),
    ({"tags": ["a", 2]}, "tags[1]", "must be a string, got a number"),
    ({"sizes": ["s"]}, "sizes", "must be an object, got an array"),
    ({"inner": "n"}, "inner", "must be an object, got a string"),
    ({"inner": {"name": 5}}, "inner.name", "must be a string, got a number"),
    ({"inners": [{"name": "m"}, 7]}, "inners[1]", "must be an object, got a number"),
    ({"extra": [1]}, "extra", "must be an object, got an array"),
    ({"items": {}}, "items", "must be an array, got an object"),
    ({"inner": None}, "inner", "must not be null; omit it to leave it unset"),
    ({"sizes": None}, "sizes", "must not be null; omit it to leave it unset"),
]  # fmt: skip


@pytest.mark.parametrize(("obj", "field", "description"), REJECTED)
def test_a_value_of_the_wrong_kind_is_named_in_json_terms(
    sample: type[Message], obj: dict[str, Any], field: str, description: str
) -> None:
    message = sample()

    assert parse_json_object(obj, message, "payload") == [
        FieldViolation(f"payload.{field}", description)
    ]
    assert not message.ListFields(), "nothing of a rejected object is merged"


def test_every_wrong_value_is_named_at_once(sample: type[Message]) -> None:
    violations = parse_json_object({"text": 1, "flag": 1, "unknown": 1}, sample())

    assert [v.field for v in violations] == ["text", "flag", "unknown"]
