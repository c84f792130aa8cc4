"""JSON into protobuf: a value of the wrong JSON kind is named by its field, in JSON's words."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import message_factory
from google.protobuf.message import Message
from taskgateway_api.images.v1 import images_pb2
from taskgateway_api.taskgateway.v1 import gateway_pb2

from gateway.contracts.jsonmapping import entry_violations, parse_json_object
from gateway.errors import FieldViolation
from tests.unit.protos import compile_proto

SAMPLE = """
syntax = "proto3";
package sample.v1;
import "google/protobuf/any.proto";
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
  google.protobuf.Any packed = 13;
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


# --- a hostile object: many problems, long keys -----------------------------------------------


class CountedObject(Mapping[str, Any]):
    """A JSON object that counts how many of its values were read."""

    def __init__(self, items: dict[str, Any]) -> None:
        self._items = items
        self.read = 0

    def __getitem__(self, key: str) -> Any:
        self.read += 1
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


def test_many_unknown_keys_are_named_twenty_at_most(sample: type[Message]) -> None:
    """Twenty are named, a twenty-first says there are more; the known fields are listed once."""
    violations = parse_json_object({f"key{i}": 1 for i in range(1000)}, sample(), "payload")

    assert [v.field for v in violations[:20]] == [f"payload.key{i}" for i in range(20)]
    assert len(violations) == 21
    assert violations[0].description.startswith("unknown field of sample.v1.Sample; known fields:")
    assert all("known fields" not in v.description for v in violations[1:])


def test_the_check_stops_once_it_found_enough(sample: type[Message]) -> None:
    """100,000 unknown keys cost the check no more than the first few of them."""
    obj = CountedObject({f"key{i}": 1 for i in range(100_000)})

    parse_json_object(obj, sample())

    assert obj.read <= 21


def test_an_echoed_key_is_cut_short(sample: type[Message]) -> None:
    (violation,) = parse_json_object({"k" * 5000: 1}, sample(), "payload")

    assert violation.field.startswith("payload.kkk")
    assert violation.field.endswith("…")
    assert len(violation.field) <= 80


def test_an_echoed_value_is_cut_short(sample: type[Message]) -> None:
    """protobuf's own error quotes the value (here a number too large for int64)."""
    (violation,) = parse_json_object({"count": "9" * 5000}, sample())

    assert violation.field == "count"
    assert len(violation.description) <= 200


# --- google.protobuf.Any: checked as the message its @type names --------------------------------

PACKED = "type.googleapis.com/sample.v1.Inner"


def test_a_packed_message_is_parsed(sample: type[Message]) -> None:
    message = sample()

    assert parse_json_object({"packed": {"@type": PACKED, "name": "n"}}, message) == []
    assert message.packed.type_url == PACKED  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("packed", "field", "description"),
    [
        ({"@type": PACKED, "name": 5}, "packed.name", "must be a string, got a number"),
        ({"@type": PACKED, "nmae": "n"}, "packed.nmae", "unknown field of sample.v1.Inner"),
        ({"@type": 5}, "packed.@type", "must be a string"),
        ({"name": "n"}, "packed.@type", "missing"),
        ({"@type": "type.googleapis.com/nope.Nope"}, "packed.@type", "nope.Nope"),
    ],
)
def test_a_packed_message_is_checked_as_its_type(
    sample: type[Message], packed: dict[str, Any], field: str, description: str
) -> None:
    (violation,) = parse_json_object({"packed": packed}, sample())

    assert violation.field == field
    assert description in violation.description


# --- the entries of a batch fail alone ------------------------------------------------------------

GENERATE_URL = "type.googleapis.com/images.v1.GenerateRequest"
PAYLOAD = {"model": "m", "prompt": "p", "image_name": "n"}


def test_a_bad_batch_entry_fails_alone() -> None:
    """The good entries are parsed; each bad one carries what is wrong with it, by its index."""
    batch = gateway_pb2.PublishBatchRequest()
    entries = [
        {"typed": {"@type": GENERATE_URL, "user_id": "u", "payload": {**PAYLOAD, "width": "abc"}}},
        {"publish": {"user_id": "u2", "task_type": "images.generate", "payload": PAYLOAD}},
        {"typed": {"@type": 5}},
        {"typed": {"@type": GENERATE_URL, "user_id": "u", "payload": {**PAYLOAD, "width": 1e100}}},
        {"publish": {"user_id": 7}},
        {"typed": {"@type": GENERATE_URL, "user_id": "u3", "payload": PAYLOAD}},
    ]

    assert parse_json_object({"entries": entries}, batch) == []

    assert entry_violations(batch.entries[0]) == (
        FieldViolation("entries[0].typed.payload.width", f"{INTEGER}, got a string"),
    )
    assert entry_violations(batch.entries[1]) == ()
    assert batch.entries[1].publish.user_id == "u2"
    assert [v.field for v in entry_violations(batch.entries[2])] == ["entries[2].typed.@type"]
    assert [v.field for v in entry_violations(batch.entries[3])] == [
        "entries[3].typed.payload.width"
    ]
    assert [v.field for v in entry_violations(batch.entries[4])] == ["entries[4].publish.user_id"]
    assert entry_violations(batch.entries[5]) == ()
    typed = images_pb2.GenerateRequest()
    assert batch.entries[5].typed.Unpack(typed)
    assert typed.user_id == "u3"


@pytest.mark.parametrize(
    ("body", "field"),
    [({"entries": 5}, "entries"), ({"entries": [], "extra": 1}, "extra")],
)
def test_a_bad_batch_outside_its_entries_fails_whole(body: dict[str, Any], field: str) -> None:
    (violation,) = parse_json_object(body, gateway_pb2.PublishBatchRequest())

    assert violation.field == field
