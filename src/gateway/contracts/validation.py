"""Request checks shared by every transport: user ids, idempotency keys and payload field rules.

Payload rules come from the `taskgateway.v1.field` option on each payload field and are
read once per message type, not once per request.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from taskgateway_api.taskgateway.v1 import options_pb2

from gateway.errors import FieldViolation

__all__ = [
    "MAX_IDEMPOTENCY_KEY_LENGTH",
    "MAX_USER_ID_LENGTH",
    "check_idempotency_key",
    "check_payload",
    "check_user_id",
    "request_field_schemas",
]

MAX_USER_ID_LENGTH = 128
MAX_IDEMPOTENCY_KEY_LENGTH = 256

# protoc's stubs type extensions as plain FieldDescriptors, which mypy cannot index with.
_FIELD_OPTION: Any = options_pb2.field

_SIZED = (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES)

_NUMERIC = frozenset(
    {
        FieldDescriptor.CPPTYPE_INT32,
        FieldDescriptor.CPPTYPE_INT64,
        FieldDescriptor.CPPTYPE_UINT32,
        FieldDescriptor.CPPTYPE_UINT64,
        FieldDescriptor.CPPTYPE_DOUBLE,
        FieldDescriptor.CPPTYPE_FLOAT,
    }
)


def request_field_schemas(task_types: Iterable[str]) -> dict[str, dict[str, Any]]:
    """JSON Schema keywords for the request fields these checks cover, for the OpenAPI document."""
    return {
        # No ':' (it separates the parts of the task key) and no C0/C1 control characters.
        "user_id": {
            "minLength": 1,
            "maxLength": MAX_USER_ID_LENGTH,
            "pattern": "^[^:\\u0000-\\u001f\\u007f-\\u009f]*$",
        },
        "idempotency_key": {"maxLength": MAX_IDEMPOTENCY_KEY_LENGTH},
        "task_type": {"enum": sorted(task_types)},
    }


def check_user_id(user_id: str) -> list[FieldViolation]:
    """The first part of the task key: 1 to 128 characters, no ':' and no control characters."""
    if not user_id:
        return [FieldViolation("user_id", "must not be empty")]
    if len(user_id) > MAX_USER_ID_LENGTH:
        return [
            FieldViolation(
                "user_id", f"must be at most {MAX_USER_ID_LENGTH} characters, got {len(user_id)}"
            )
        ]
    if ":" in user_id:
        return [
            FieldViolation(
                "user_id", "must not contain ':', which separates the parts of the task key"
            )
        ]
    for position, char in enumerate(user_id):
        if _is_control(char):
            return [
                FieldViolation(
                    "user_id",
                    "must not contain control characters "
                    f"(U+{ord(char):04X} at position {position})",
                )
            ]
    return []


def check_idempotency_key(key: str) -> list[FieldViolation]:
    if len(key) > MAX_IDEMPOTENCY_KEY_LENGTH:
        return [
            FieldViolation(
                "idempotency_key",
                f"must be at most {MAX_IDEMPOTENCY_KEY_LENGTH} characters, got {len(key)}",
            )
        ]
    return []


def check_payload(payload: Message, prefix: str = "payload") -> list[FieldViolation]:
    """Every failed field rule of a typed payload, named by its proto path (payload.prompt)."""
    violations: list[FieldViolation] = []
    for field, rules in _rules(payload.DESCRIPTOR):
        path = f"{prefix}.{field.name}"
        present = _is_present(payload, field)
        if rules.required and not present:
            violations.append(FieldViolation(path, "is required"))
            continue
        if not present:
            continue
        value = getattr(payload, field.name)
        if rules.max_len and field.type in _SIZED and len(value) > rules.max_len:
            violations.append(
                FieldViolation(path, f"must be at most {rules.max_len} long, got {len(value)}")
            )
        if field.cpp_type in _NUMERIC and not _is_repeated(field):
            if rules.HasField("min") and value < rules.min:
                violations.append(
                    FieldViolation(path, f"must be at least {rules.min:g}, got {value}")
                )
            if rules.HasField("max") and value > rules.max:
                violations.append(
                    FieldViolation(path, f"must be at most {rules.max:g}, got {value}")
                )
        if field.type == FieldDescriptor.TYPE_MESSAGE and not _is_repeated(field):
            violations.extend(check_payload(value, path))
    return violations


@functools.cache
def _rules(descriptor: Descriptor) -> tuple[tuple[FieldDescriptor, options_pb2.FieldRules], ...]:
    """The fields of a message that carry rules, or are messages whose fields might."""
    rules: list[tuple[FieldDescriptor, options_pb2.FieldRules]] = []
    for field in descriptor.fields:
        options = field.GetOptions()
        has_rules = options.HasExtension(_FIELD_OPTION)
        nested = field.type == FieldDescriptor.TYPE_MESSAGE and not _is_repeated(field)
        if has_rules or nested:
            rules.append((field, options.Extensions[_FIELD_OPTION]))
    return tuple(rules)


def _is_present(message: Message, field: FieldDescriptor) -> bool:
    if _is_repeated(field):
        return len(getattr(message, field.name)) > 0
    if field.has_presence:
        if not message.HasField(field.name):
            return False
        # A set but empty string is no more useful to a worker than an absent one.
        return field.type not in _SIZED or bool(getattr(message, field.name))
    return bool(getattr(message, field.name))


def _is_repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def _is_control(char: str) -> bool:
    code = ord(char)
    return code < 0x20 or 0x7F <= code < 0xA0
