"""JSON Schema (draft 2020-12) of protobuf messages, as their proto3 JSON mapping carries them.

The task catalog serves each payload's schema so clients can check a task before sending it, and
the OpenAPI document reuses the same schemas as components; both come from one walker over the
descriptors, parameterised by where `$ref`s point (`#/$defs/` or `#/components/schemas/`).

What the schemas document is the canonical JSON the gateway emits and expects: proto field
names, enum names, 64-bit integers as strings or integers, bytes as base64, well-known types in
their special JSON forms, plus the `taskgateway.v1.field` rules the gateway enforces. The
protobuf parser is laxer (lowerCamel names, `null` for any field, enum numbers, numeric strings
for 32-bit integers, "NaN"/"Infinity" for floats); those are accepted but not advertised.
"""

from __future__ import annotations

import copy
import itertools
import math
from typing import TYPE_CHECKING, Any, cast

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from taskgateway_api.taskgateway.v1 import options_pb2

from gateway.contracts.comments import Comments

if TYPE_CHECKING:
    # types-protobuf types `Message.DESCRIPTOR` as either this or descriptor.Descriptor; the
    # public functions take both so callers need no cast.
    from google._upb._message import Descriptor as _UpbDescriptor

__all__ = [
    "COMPONENTS_REF_PREFIX",
    "JSON_SCHEMA_DIALECT",
    "SchemaBuilder",
    "message_schema",
]

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
COMPONENTS_REF_PREFIX = "#/components/schemas/"
_DEFS_REF_PREFIX = "#/$defs/"

# protoc's stubs type extensions as plain FieldDescriptors, which mypy cannot index with.
_FIELD_OPTION: Any = options_pb2.field

_INT32_RANGE = (-(2**31), 2**31 - 1)
_UINT32_RANGE = (0, 2**32 - 1)
_INT64_RANGE = (-(2**63), 2**63 - 1)
_UINT64_RANGE = (0, 2**64 - 1)

# Integer types by (range, format, whether proto JSON writes them as strings).
_INTEGERS: dict[int, tuple[tuple[int, int], str, bool]] = {
    FieldDescriptor.TYPE_INT32: (_INT32_RANGE, "int32", False),
    FieldDescriptor.TYPE_SINT32: (_INT32_RANGE, "int32", False),
    FieldDescriptor.TYPE_SFIXED32: (_INT32_RANGE, "int32", False),
    FieldDescriptor.TYPE_UINT32: (_UINT32_RANGE, "uint32", False),
    FieldDescriptor.TYPE_FIXED32: (_UINT32_RANGE, "uint32", False),
    FieldDescriptor.TYPE_INT64: (_INT64_RANGE, "int64", True),
    FieldDescriptor.TYPE_SINT64: (_INT64_RANGE, "int64", True),
    FieldDescriptor.TYPE_SFIXED64: (_INT64_RANGE, "int64", True),
    FieldDescriptor.TYPE_UINT64: (_UINT64_RANGE, "uint64", True),
    FieldDescriptor.TYPE_FIXED64: (_UINT64_RANGE, "uint64", True),
}
_FLOATS = {FieldDescriptor.TYPE_DOUBLE: "double", FieldDescriptor.TYPE_FLOAT: "float"}
_SIZED = (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES)

# Well-known types whose JSON form is not an object of their fields.
_WELL_KNOWN: dict[str, dict[str, Any]] = {
    "google.protobuf.Struct": {"type": "object"},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array"},
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {
        "type": "string",
        "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?s$",
        "description": 'Seconds with an "s" suffix, e.g. "1.5s".',
    },
    "google.protobuf.FieldMask": {"type": "string"},
    # "@type" (e.g. "type.googleapis.com/images.v1.GenerateRequest") and the message's fields.
    # protobuf's JSON mapping reads {} as an empty Any, so "@type" is not required here; the
    # gateway answers an Any it cannot use with INVALID_ARGUMENT.
    "google.protobuf.Any": {
        "type": "object",
        "properties": {"@type": {"type": "string"}},
    },
}
# A wrapper's JSON form is its `value` field's.
_WRAPPERS = frozenset(
    f"google.protobuf.{name}Value"
    for name in ("Double", "Float", "Int64", "UInt64", "Int32", "UInt32", "Bool", "String", "Bytes")
)


class SchemaBuilder:
    """Schemas of messages that point at each other with `$ref`s under one prefix.

    Each message is defined once, under its full name, however often and however recursively
    it is referenced; `definitions` holds them all once the walk is done.
    """

    def __init__(
        self, ref_prefix: str, comments: Comments | None = None, *, root: Descriptor | None = None
    ) -> None:
        self._ref_prefix = ref_prefix
        self._comments = comments
        # The message whose schema is the document itself: references to it are "#".
        self._root = root.full_name if root is not None else None
        self._definitions: dict[str, dict[str, Any]] = {}

    @property
    def definitions(self) -> dict[str, dict[str, Any]]:
        """Every message defined so far, by full name, sorted for a deterministic document."""
        return dict(sorted(self._definitions.items()))

    def reference(self, descriptor: Descriptor) -> dict[str, Any]:
        """The schema a field of this message type uses: a `$ref`, or a well-known type's form."""
        special = _special_schema(descriptor)
        if special is not None:
            return special
        if descriptor.full_name == self._root:
            return {"$ref": "#"}
        return self.define(descriptor)

    def define(self, descriptor: Descriptor) -> dict[str, Any]:
        """A `$ref` to the message's definition, adding it (and what it refers to) if new."""
        name = descriptor.full_name
        if name not in self._definitions:
            # Registered before its fields are walked, so a recursive reference finds it.
            definition: dict[str, Any] = {}
            self._definitions[name] = definition
            definition.update(self.message(descriptor))
        return {"$ref": self._ref_prefix + name}

    def message(self, descriptor: Descriptor) -> dict[str, Any]:
        """The schema of the message itself (not a reference to it)."""
        schema: dict[str, Any] = {"title": descriptor.full_name}
        if description := self._comment(descriptor.full_name):
            schema["description"] = description
        special = _special_schema(descriptor)
        if special is not None:
            return schema | special
        schema["type"] = "object"
        schema["properties"] = {field.name: self.field(field) for field in descriptor.fields}
        schema["additionalProperties"] = False
        required = [field.name for field in descriptor.fields if _rules(field).required]
        if required:
            schema["required"] = required
        exclusive = _exclusive_groups(descriptor)
        if exclusive:
            # Proto JSON rejects two members of one oneof; the schema says so, pair by pair.
            schema["allOf"] = [
                {"not": {"anyOf": [{"required": list(pair)} for pair in pairs]}}
                for pairs in (itertools.combinations(group, 2) for group in exclusive)
            ]
        return schema

    def field(self, field: FieldDescriptor) -> dict[str, Any]:
        """The schema of a field's JSON value, with its rules and its comment."""
        rules = _rules(field)
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            schema: dict[str, Any] = {
                "type": "object",
                "additionalProperties": self._value(entry.fields_by_name["value"], rules),
            }
            keys = _map_key_schema(entry.fields_by_name["key"])
            if keys:
                schema["propertyNames"] = keys
            if rules.required:
                schema["minProperties"] = 1
        elif field.is_repeated:
            schema = {"type": "array", "items": self._value(field, rules)}
            if rules.required:
                schema["minItems"] = 1
        else:
            schema = self._value(field, rules)
            if rules.required:
                schema.update(_non_default(field))
        if description := self._comment(field.full_name):
            schema["description"] = description
        return schema

    def _value(self, field: FieldDescriptor, rules: options_pb2.FieldRules) -> dict[str, Any]:
        """One value of the field (an element, for a repeated field), with its bounds."""
        if field.message_type is not None:
            return self.reference(field.message_type)
        return _scalar(field, rules)

    def _comment(self, full_name: str) -> str:
        return self._comments.of(full_name) if self._comments is not None else ""


def message_schema(
    descriptor: Descriptor | _UpbDescriptor, comments: Comments | None = None
) -> dict[str, Any]:
    """A standalone schema of the message, nested messages under `$defs`."""
    descriptor = cast(Descriptor, descriptor)
    builder = SchemaBuilder(_DEFS_REF_PREFIX, comments, root=descriptor)
    schema: dict[str, Any] = {"$schema": JSON_SCHEMA_DIALECT, **builder.message(descriptor)}
    if definitions := builder.definitions:
        schema["$defs"] = definitions
    return schema


def _special_schema(descriptor: Descriptor) -> dict[str, Any] | None:
    name = descriptor.full_name
    if name in _WELL_KNOWN:
        # A copy: callers add descriptions to what they get.
        return copy.deepcopy(_WELL_KNOWN[name])
    if name in _WRAPPERS:
        return _scalar(descriptor.fields_by_name["value"], options_pb2.FieldRules())
    return None


def _rules(field: FieldDescriptor) -> options_pb2.FieldRules:
    options = field.GetOptions()
    if options.HasExtension(_FIELD_OPTION):
        rules: options_pb2.FieldRules = options.Extensions[_FIELD_OPTION]
        return rules
    return options_pb2.FieldRules()


def _scalar(field: FieldDescriptor, rules: options_pb2.FieldRules) -> dict[str, Any]:
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        schema: dict[str, Any] = {"type": "string"}
        if rules.max_len:
            schema["maxLength"] = rules.max_len
        return schema
    if kind == FieldDescriptor.TYPE_BYTES:
        schema = {"type": "string", "contentEncoding": "base64", "format": "byte"}
        if rules.max_len:
            # max_len counts bytes; padded base64 spends 4 characters on every 3 of them.
            schema["maxLength"] = 4 * math.ceil(rules.max_len / 3)
        return schema
    if kind == FieldDescriptor.TYPE_BOOL:
        return {"type": "boolean"}
    if field.enum_type is not None:
        return _enum_schema(field.enum_type)
    if kind in _FLOATS:
        schema = {"type": "number", "format": _FLOATS[kind]}
        if rules.HasField("min"):
            schema["minimum"] = _number(rules.min)
        if rules.HasField("max"):
            schema["maximum"] = _number(rules.max)
        return schema
    (low, high), number_format, as_string = _INTEGERS[kind]
    if rules.HasField("min"):
        low = max(low, math.ceil(rules.min))
    if rules.HasField("max"):
        high = min(high, math.floor(rules.max))
    integer = {"type": "integer", "format": number_format, "minimum": low, "maximum": high}
    if not as_string:
        return integer
    # Proto JSON writes 64-bit integers as strings (doubles lose precision past 2**53) and reads
    # both forms. A string cannot carry bounds, so the rules bind the integer form only.
    return {"anyOf": [integer, {"type": "string", "pattern": "^-?[0-9]+$"}]}


def _enum_schema(enum: EnumDescriptor) -> dict[str, Any]:
    if enum.full_name == "google.protobuf.NullValue":
        return {"type": "null"}
    return {"type": "string", "enum": [value.name for value in enum.values]}


def _map_key_schema(key: FieldDescriptor) -> dict[str, Any]:
    """Constraints on a map's JSON keys, which are strings whatever the proto key type."""
    if key.type == FieldDescriptor.TYPE_BOOL:
        return {"enum": ["true", "false"]}
    if key.type in _INTEGERS:
        return {"pattern": "^-?[0-9]+$"}
    return {}


def _non_default(field: FieldDescriptor) -> dict[str, Any]:
    """What `required` adds beyond presence: the gateway also refuses a set-but-empty value."""
    if field.type in _SIZED:
        return {"minLength": 1}
    if field.has_presence:
        # An explicitly set zero counts as present for an optional scalar.
        return {}
    if field.type == FieldDescriptor.TYPE_BOOL:
        return {"const": True}
    if field.enum_type is not None:
        return {"not": {"const": field.enum_type.values[0].name}}
    if field.type in _INTEGERS and _INTEGERS[field.type][2]:
        return {"not": {"enum": [0, "0"]}}
    if field.type in _INTEGERS or field.type in _FLOATS:
        return {"not": {"const": 0}}
    return {}


def _exclusive_groups(descriptor: Descriptor) -> list[list[str]]:
    """The member names of each real oneof with more than one member."""
    # Python's OneofDescriptor cannot tell a proto3 `optional` (a synthetic oneof) from a real
    # oneof; the descriptor proto can.
    proto = descriptor_pb2.DescriptorProto()
    descriptor.CopyToProto(proto)
    groups: dict[int, list[str]] = {}
    for field in proto.field:
        if field.HasField("oneof_index") and not field.proto3_optional:
            groups.setdefault(field.oneof_index, []).append(field.name)
    return [names for _, names in sorted(groups.items()) if len(names) > 1]


def _number(value: float) -> int | float:
    # Rules are doubles; 64.0 reads better (and compares the same) as 64.
    return int(value) if value.is_integer() else value
