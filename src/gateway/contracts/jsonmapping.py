"""JSON objects into protobuf messages, with errors that name the field that broke.

protobuf's `json_format` accepts proto names and lowerCamel names alike; its errors name
fields in prose. This turns them, and unknown fields at any depth, into `FieldViolation`s
with dotted paths (`payload.width`) as `google.rpc.BadRequest` wants them.

One rule is stricter than protobuf's JSON mapping: `null` is refused for a field (protobuf
reads it as "unset"), except where the field holds a JSON value. A client that sends
`"width": null` most likely meant something, and the documented schema has no nulls.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor
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


def _check_fields(
    obj: Mapping[str, Any], descriptor: Descriptor, prefix: str
) -> list[FieldViolation]:
    """Unknown fields and nulls, at any depth of nested messages."""
    by_name = {f.name: f for f in descriptor.fields} | {f.json_name: f for f in descriptor.fields}
    violations = []
    for key, value in obj.items():
        field = by_name.get(key)
        if field is None:
            known = ", ".join(f.name for f in descriptor.fields)
            violations.append(
                FieldViolation(
                    _join(prefix, key),
                    f"unknown field of {descriptor.full_name}; known fields: {known}",
                )
            )
            continue
        kind = field.message_type or field.enum_type
        if value is None and (kind is None or kind.full_name not in _NULLABLE):
            violations.append(
                FieldViolation(
                    _join(prefix, field.name), "must not be null; omit it to leave it unset"
                )
            )
            continue
        nested = field.message_type
        if (
            nested is None
            or nested.full_name.startswith("google.protobuf.")
            or nested.GetOptions().map_entry
        ):
            continue  # scalars, well-known types and maps: json_format checks them
        path = _join(prefix, field.name)
        if field.is_repeated and isinstance(value, list):
            for index, item in enumerate(value):
                if isinstance(item, Mapping):
                    violations += _check_fields(item, nested, f"{path}[{index}]")
        elif isinstance(value, Mapping):
            violations += _check_fields(value, nested, path)
    return violations


def _join(prefix: str, path: str) -> str:
    return f"{prefix}.{path}" if prefix and path else prefix or path
