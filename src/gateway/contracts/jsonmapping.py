"""JSON objects into protobuf messages, with errors that name the field that broke.

protobuf's `json_format` accepts proto names and lowerCamel names alike; its errors name
fields in prose. This turns them, and unknown fields at any depth, into `FieldViolation`s
with dotted paths (`payload.width`) as `google.rpc.BadRequest` wants them.

One rule is stricter than protobuf's JSON mapping: `null` is refused for a field (protobuf
reads it as "unset"), except where the field holds a JSON value. A client that sends
`"width": null` most likely meant something, and the documented schema has no nulls.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from gateway.errors import FieldViolation

__all__ = ["json_number", "parse_json_object"]

# Integers a double holds exactly: within this, a double that is integral was an integer.
_EXACT_INTEGER_LIMIT = 2**53

# `... at GenerateRequest.payload.width.` (some versions quote the path).
_PATH = re.compile(r' at "?[^".\s]+\.([^"\s]+?)"?\.?$')
# `Failed to parse payload field: Failed to parse width field: ...` from the outside in.
_FIELD = re.compile(r"Failed to parse (\w+) field: ")


def parse_json_object(
    obj: Mapping[str, Any], message: Message, prefix: str = ""
) -> list[FieldViolation]:
    """Merge a JSON object into `message`; return what was wrong with it (nothing: parsed)."""
    descriptor: Descriptor = message.DESCRIPTOR  # type: ignore[assignment]
    violations = _check_fields(obj, descriptor, prefix)
    if violations:
        return violations
    try:
        json_format.ParseDict(dict(obj), message)
    except json_format.ParseError as exc:
        return [_violation(str(exc).split("\n", 1)[0], prefix)]
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        # json_format lets some hostile shapes escape as plain errors (e.g. a non-string
        # "@type" in an Any); they are still the client's input, not a gateway fault.
        return [FieldViolation(prefix or "body", f"cannot be parsed: {exc}")]
    return []


def json_number(number: float) -> int | float:
    """A double from protobuf as the JSON number it was: `1.0` as `1`.

    A Struct (and protobuf's JSON mapping of it) keeps every number as a double; the legacy
    service forwarded `1` as `1`, so integral values within a double's exact range become
    ints again.
    """
    if number.is_integer() and abs(number) <= _EXACT_INTEGER_LIMIT:
        return int(number)
    return number


def _violation(text: str, prefix: str) -> FieldViolation:
    path_match = _PATH.search(text)
    if path_match:
        path = path_match.group(1)
        text = text[: path_match.start()]
    else:
        path = ".".join(_FIELD.findall(text))
    description = _FIELD.sub("", text).rstrip(".") or "cannot be parsed"
    return FieldViolation(_join(prefix, path) or prefix or "body", description)


# Fields whose JSON form may be null: a JSON value.
_NULLABLE = frozenset({"google.protobuf.Value", "google.protobuf.NullValue"})

_INTEGERS = frozenset(
    {
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT32,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT32,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED32,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED32,
        FieldDescriptor.TYPE_SFIXED64,
    }
)
_FLOATS = frozenset({FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE})
# proto3 JSON writes 64-bit integers as strings of digits, and accepts them for any integer.
_INTEGER_STRING = re.compile(r"-?[0-9]+")


def _check_fields(
    obj: Mapping[str, Any], descriptor: Descriptor, prefix: str
) -> list[FieldViolation]:
    """Unknown fields, nulls and values of the wrong JSON kind, at any depth of nested messages.

    protobuf's own errors for a wrong kind are Python's (`expected string or bytes-like
    object, got 'int'`), and for a string where a message belongs it reads the string's
    characters as field names; a client gets "must be a string, got number" instead.
    """
    violations = []
    for key, value in obj.items():
        field = _fields_by_name(descriptor).get(key)
        if field is None:
            known = ", ".join(f.name for f in descriptor.fields)
            violations.append(
                FieldViolation(
                    _join(prefix, key),
                    f"unknown field of {descriptor.full_name}; known fields: {known}",
                )
            )
            continue
        path = _join(prefix, field.name)
        if value is None or not field.is_repeated:
            violations += _check_value(value, field, path)
        elif field.message_type is not None and field.message_type.GetOptions().map_entry:
            if not isinstance(value, Mapping):  # its keys and values: json_format checks them
                violations.append(_wrong_kind(path, "an object", value))
        elif not isinstance(value, list):
            violations.append(_wrong_kind(path, "an array", value))
        else:
            for index, item in enumerate(value):
                violations += _check_value(item, field, f"{path}[{index}]")
    return violations


@functools.cache
def _fields_by_name(descriptor: Descriptor) -> Mapping[str, FieldDescriptor]:
    """A message's fields by their proto and their JSON (lowerCamel) names."""
    fields = descriptor.fields
    return MappingProxyType({f.name: f for f in fields} | {f.json_name: f for f in fields})


def _check_value(value: Any, field: FieldDescriptor, path: str) -> list[FieldViolation]:
    """One value of `field` (one item, if it is repeated): its JSON kind, and inside it."""
    nested = field.message_type
    kind = nested or field.enum_type
    if value is None:
        if kind is not None and kind.full_name in _NULLABLE:
            return []
        return [FieldViolation(path, "must not be null; omit it to leave it unset")]
    if nested is not None:
        if nested.full_name == "google.protobuf.ListValue":
            return [] if isinstance(value, list) else [_wrong_kind(path, "an array", value)]
        if nested.full_name.startswith("google.protobuf.") and nested.full_name not in (
            "google.protobuf.Struct",
            "google.protobuf.Any",
        ):
            return []  # Value, Timestamp, Duration, wrappers, FieldMask: json_format checks them
        if not isinstance(value, Mapping):
            return [_wrong_kind(path, "an object", value)]
        if nested.full_name.startswith("google.protobuf."):
            return []  # Struct holds any object; Any's fields depend on its @type
        return _check_fields(value, nested, path)
    if field.enum_type is not None:
        ok = isinstance(value, str) or _is_number(value)
        return [] if ok else [_wrong_kind(path, "an enum value's name or number", value)]
    if field.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
        return [] if isinstance(value, str) else [_wrong_kind(path, "a string", value)]
    if field.type == FieldDescriptor.TYPE_BOOL:
        return [] if isinstance(value, bool) else [_wrong_kind(path, "true or false", value)]
    if field.type in _INTEGERS:
        if _is_number(value) or (isinstance(value, str) and _INTEGER_STRING.fullmatch(value)):
            return []  # a fraction or an integer out of range: json_format says so
        return [_wrong_kind(path, "an integer (a number, or a string of digits)", value)]
    if field.type in _FLOATS and not (_is_number(value) or isinstance(value, str)):
        return [_wrong_kind(path, "a number", value)]  # strings: "NaN", "Infinity", "1.5"
    return []


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _wrong_kind(path: str, expected: str, value: Any) -> FieldViolation:
    return FieldViolation(path, f"must be {expected}, got {_json_kind(value)}")


def _json_kind(value: Any) -> str:
    """The JSON name of a parsed JSON value's type."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _join(prefix: str, path: str) -> str:
    return f"{prefix}.{path}" if prefix and path else prefix or path
