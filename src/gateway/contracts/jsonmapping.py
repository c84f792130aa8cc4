"""JSON objects into protobuf messages, with errors that name the field that broke.

protobuf's `json_format` accepts proto names and lowerCamel names alike; its errors name
fields in prose. This turns them, and unknown fields at any depth, into `FieldViolation`s
with dotted paths (`payload.width`) as `google.rpc.BadRequest` wants them. A
`google.protobuf.Any` is checked as the message its "@type" names.

One rule is stricter than protobuf's JSON mapping: `null` is refused for a field (protobuf
reads it as "unset"), except where the field holds a JSON value. A client that sends
`"width": null` most likely meant something, and the documented schema has no nulls.

A hostile object (a hundred thousand unknown keys, a key of a megabyte) costs little and gets
a short answer: the check stops once it found more than an error names (MAX_VIOLATIONS), the
known fields are listed once, and the keys and values quoted are cut short.

The entries of a batch fail alone, as the contract says ("one bad entry does not fail the
others"): an entry (taskgateway.v1.TaskEntry) that does not parse is replaced by one that
carries its violations, for `entry_violations` to read, and the other entries are parsed.
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import Any

from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from taskgateway_api.taskgateway.v1 import gateway_pb2

from gateway.errors import MAX_VIOLATIONS, FieldViolation, clip, escaped

__all__ = ["entry_violations", "json_number", "parse_json_object"]

# Integers a double holds exactly: within this, a double that is integral was an integer.
_EXACT_INTEGER_LIMIT = 2**53

# `... at GenerateRequest.payload.width.` (some versions quote the path).
_PATH = re.compile(r' at "?[^".\s]+\.([^"\s]+?)"?\.?$')
# `Failed to parse payload field: Failed to parse width field: ...` from the outside in.
_FIELD = re.compile(r"Failed to parse (\w+) field: ")
# protobuf's errors quote the value that failed (a number of 5,000 digits, say): the most of
# one a violation keeps.
_DESCRIPTION_LENGTH = 160

_TASK_ENTRY = gateway_pb2.TaskEntry.DESCRIPTOR.full_name
_BAD_REQUEST = error_details_pb2.BadRequest


def parse_json_object(
    obj: Mapping[str, Any], message: Message, prefix: str = ""
) -> list[FieldViolation]:
    """Merge a JSON object into `message`; return what was wrong with it (nothing: parsed).

    Violations past MAX_VIOLATIONS are not looked for: the last of MAX_VIOLATIONS + 1 stands
    for them (a GatewayError names MAX_VIOLATIONS and says there are more).
    """
    descriptor: Descriptor = message.DESCRIPTOR  # type: ignore[assignment]
    entries = _entry_lists(obj, descriptor)
    rest = {k: v for k, v in obj.items() if k not in entries} if entries else obj
    violations = _first(_check_fields(rest.items(), descriptor, prefix, set()))
    if not violations:
        violations = _parse(rest, message, prefix)
    if violations:
        return violations
    for key, field in entries.items():
        container = getattr(message, field.name)
        for index, item in enumerate(obj[key]):
            _parse_entry(item, field, container.add(), f"{_join(prefix, field.name)}[{index}]")
    return []


def entry_violations(entry: gateway_pb2.TaskEntry) -> tuple[FieldViolation, ...]:
    """What is wrong with a batch entry whose JSON did not parse (`parse_json_object` put it
    there, as a google.rpc.BadRequest in `typed`); nothing for an entry that parsed.

    A client may pack a BadRequest itself: it is then told what it wrote, and nothing of the
    entry is published either way.
    """
    if entry.WhichOneof("task") != "typed" or not entry.typed.Is(_BAD_REQUEST.DESCRIPTOR):
        return ()
    bad_request = _BAD_REQUEST()
    entry.typed.Unpack(bad_request)
    return tuple(FieldViolation(v.field, v.description) for v in bad_request.field_violations)


def json_number(number: float) -> int | float:
    """A double from protobuf as the JSON number it was: `1.0` as `1`.

    A Struct (and protobuf's JSON mapping of it) keeps every number as a double; the legacy
    service forwarded `1` as `1`, so integral values within a double's exact range become
    ints again.
    """
    if number.is_integer() and abs(number) <= _EXACT_INTEGER_LIMIT:
        return int(number)
    return number


def _first(violations: Iterable[FieldViolation]) -> list[FieldViolation]:
    """Up to one more violation than an error names: the check stops there."""
    return list(itertools.islice(violations, MAX_VIOLATIONS + 1))


def _parse(obj: Mapping[str, Any], message: Message, prefix: str) -> list[FieldViolation]:
    """protobuf's own parse of a checked object; what it found wrong (range, enum name...)."""
    descriptor: Descriptor = message.DESCRIPTOR  # type: ignore[assignment]
    pool = descriptor.file.pool  # where an Any's "@type" is looked up
    try:
        json_format.ParseDict(dict(obj), message, descriptor_pool=pool)
    except json_format.ParseError as exc:
        return [_violation(str(exc).split("\n", 1)[0], prefix)]
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        # json_format lets some hostile shapes escape as plain errors; they are still the
        # client's input, not a gateway fault.
        description = clip(f"cannot be parsed: {exc}", _DESCRIPTION_LENGTH)
        return [FieldViolation(prefix or "body", description)]
    return []


def _violation(text: str, prefix: str) -> FieldViolation:
    path_match = _PATH.search(text)
    if path_match:
        path = path_match.group(1)
        text = text[: path_match.start()]
    else:
        path = ".".join(_FIELD.findall(text))
    description = _FIELD.sub("", text).rstrip(".") or "cannot be parsed"
    return FieldViolation(
        _join(prefix, path) or prefix or "body", clip(description, _DESCRIPTION_LENGTH)
    )


def _entry_lists(obj: Mapping[str, Any], descriptor: Descriptor) -> dict[str, FieldDescriptor]:
    """The keys of `obj` that hold the entries of a batch (a list for a repeated TaskEntry)."""
    found = {}
    for field in _entry_fields(descriptor):
        for key in {field.name, field.json_name}:
            if isinstance(obj.get(key), list):
                found[key] = field
    return found


@functools.cache
def _entry_fields(descriptor: Descriptor) -> tuple[FieldDescriptor, ...]:
    """A message's repeated fields of batch entries."""
    return tuple(
        field
        for field in descriptor.fields
        if field.is_repeated
        and field.message_type is not None
        and field.message_type.full_name == _TASK_ENTRY
    )


def _parse_entry(
    item: Any, field: FieldDescriptor, entry: gateway_pb2.TaskEntry, path: str
) -> None:
    """One entry of a batch into `entry`; one that does not parse, its violations instead."""
    violations = _first(_check_value(item, field, path, set()))
    if not violations:
        if item.keys() == {"typed"}:
            violations = _parse_typed(item["typed"], entry, path)
        else:
            violations = _parse(item, entry, path)
    if violations:
        entry.Clear()
        entry.typed.Pack(
            _BAD_REQUEST(
                field_violations=[
                    _BAD_REQUEST.FieldViolation(
                        field=escaped(v.field), description=escaped(v.description)
                    )
                    for v in violations
                ]
            )
        )


def _parse_typed(
    obj: Mapping[str, Any], entry: gateway_pb2.TaskEntry, path: str
) -> list[FieldViolation]:
    """The checked Any of a typed entry into `entry`, parsed as the message its "@type" names.

    Parsed here rather than by protobuf's parse of the Any, whose errors name a field from
    the Any down (`payload.width`, not `typed.payload.width`).
    """
    entry_type: Descriptor = entry.DESCRIPTOR  # type: ignore[assignment]
    type_name = obj["@type"].rpartition("/")[2]
    descriptor = entry_type.file.pool.FindMessageTypeByName(type_name)  # the check found it
    if descriptor.full_name.startswith("google.protobuf."):  # its own JSON form: protobuf's
        return _parse({"typed": obj}, entry, path)
    message = message_factory.GetMessageClass(descriptor)()
    violations = _parse({k: v for k, v in obj.items() if k != "@type"}, message, f"{path}.typed")
    if not violations:
        entry.typed.Pack(message)
    return violations


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
    items: Iterable[tuple[str, Any]], descriptor: Descriptor, prefix: str, listed: set[str]
) -> Iterator[FieldViolation]:
    """Unknown fields, nulls and values of the wrong JSON kind, at any depth of nested messages.

    protobuf's own errors for a wrong kind are Python's (`expected string or bytes-like
    object, got 'int'`), and for a string where a message belongs it reads the string's
    characters as field names; a client gets "must be a string, got number" instead.
    Lazy: the caller stops the check once it has enough. `listed`: the message types whose
    fields a violation already listed.
    """
    fields = _fields_by_name(descriptor)
    for key, value in items:
        field = fields.get(key)
        if field is None:
            yield _unknown_field(_join(prefix, clip(key)), descriptor, listed)
            continue
        path = _join(prefix, field.name)
        if value is None or not field.is_repeated:
            yield from _check_value(value, field, path, listed)
        elif field.message_type is not None and field.message_type.GetOptions().map_entry:
            if not isinstance(value, Mapping):  # its keys and values: json_format checks them
                yield _wrong_kind(path, "an object", value)
        elif not isinstance(value, list):
            yield _wrong_kind(path, "an array", value)
        else:
            for index, item in enumerate(value):
                yield from _check_value(item, field, f"{path}[{index}]", listed)


@functools.cache
def _fields_by_name(descriptor: Descriptor) -> Mapping[str, FieldDescriptor]:
    """A message's fields by their proto and their JSON (lowerCamel) names."""
    fields = descriptor.fields
    return MappingProxyType({f.name: f for f in fields} | {f.json_name: f for f in fields})


def _unknown_field(path: str, descriptor: Descriptor, listed: set[str]) -> FieldViolation:
    """An unknown key; the first of a message type lists the type's fields (once is enough)."""
    description = f"unknown field of {descriptor.full_name}"
    if descriptor.full_name not in listed:
        listed.add(descriptor.full_name)
        description += "; known fields: " + ", ".join(f.name for f in descriptor.fields)
    return FieldViolation(path, description)


def _check_value(
    value: Any, field: FieldDescriptor, path: str, listed: set[str]
) -> Iterator[FieldViolation]:
    """One value of `field` (one item, if it is repeated): its JSON kind, and inside it."""
    wrong = _wrong_value(value, field, path)
    if wrong is not None:
        yield wrong
    elif isinstance(value, Mapping) and field.message_type is not None:
        nested = field.message_type
        if nested.full_name == "google.protobuf.Any":
            yield from _check_any(value, path, nested.file.pool, listed)
        elif not nested.full_name.startswith("google.protobuf."):
            yield from _check_fields(value.items(), nested, path, listed)
        # Struct holds any object; json_format checks the other well-known types.


def _check_any(
    obj: Mapping[str, Any], path: str, pool: DescriptorPool, listed: set[str]
) -> Iterator[FieldViolation]:
    """An Any as JSON: "@type" names a message type, the other keys are its fields."""
    type_path = f"{path}.@type"
    type_url = obj.get("@type")
    if type_url is None:
        yield FieldViolation(
            type_path, "missing: name the message, as type.googleapis.com/<its full name>"
        )
        return
    if not isinstance(type_url, str):
        yield _wrong_kind(
            type_path, "a string, type.googleapis.com/<a message's full name>", type_url
        )
        return
    try:
        descriptor = pool.FindMessageTypeByName(type_url.rpartition("/")[2])
    except KeyError:
        yield FieldViolation(type_path, f"{clip(type_url)!r} is no message type the gateway knows")
        return
    if descriptor.full_name.startswith("google.protobuf."):
        return  # a well-known type's JSON form is its own ({"@type": ..., "value": ...})
    fields = ((key, value) for key, value in obj.items() if key != "@type")
    yield from _check_fields(fields, descriptor, path, listed)


def _wrong_value(value: Any, field: FieldDescriptor, path: str) -> FieldViolation | None:
    """A null, or a value of the wrong JSON kind, for `field` (not what is inside it)."""
    nested = field.message_type
    kind = nested or field.enum_type
    if value is None:
        if kind is not None and kind.full_name in _NULLABLE:
            return None
        return FieldViolation(path, "must not be null; omit it to leave it unset")
    if nested is not None:
        if nested.full_name == "google.protobuf.ListValue":
            return None if isinstance(value, list) else _wrong_kind(path, "an array", value)
        if nested.full_name.startswith("google.protobuf.") and nested.full_name not in (
            "google.protobuf.Struct",
            "google.protobuf.Any",
        ):
            return None  # Value, Timestamp, Duration, wrappers, FieldMask: json_format checks them
        return None if isinstance(value, Mapping) else _wrong_kind(path, "an object", value)
    if field.enum_type is not None:
        ok = isinstance(value, str) or _is_number(value)
        return None if ok else _wrong_kind(path, "an enum value's name or number", value)
    if field.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
        return None if isinstance(value, str) else _wrong_kind(path, "a string", value)
    if field.type == FieldDescriptor.TYPE_BOOL:
        return None if isinstance(value, bool) else _wrong_kind(path, "true or false", value)
    if field.type in _INTEGERS:
        if _is_number(value) or (isinstance(value, str) and _INTEGER_STRING.fullmatch(value)):
            return None  # a fraction or an integer out of range: json_format says so
        return _wrong_kind(path, "an integer (a number, or a string of digits)", value)
    if field.type in _FLOATS and not (_is_number(value) or isinstance(value, str)):
        return _wrong_kind(path, "a number", value)  # strings: "NaN", "Infinity", "1.5"
    return None


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
