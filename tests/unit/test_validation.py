"""gateway.contracts.validation: user ids, idempotency keys and payload field rules."""

from __future__ import annotations

import pytest
from taskgateway_api.images.v1 import images_pb2

from gateway.contracts.validation import check_idempotency_key, check_payload, check_user_id
from gateway.errors import FieldViolation


def valid_payload(**fields: object) -> images_pb2.GeneratePayload:
    values: dict[str, object] = {"model": "m", "prompt": "a warrior", "image_name": "warrior"}
    values.update(fields)
    return images_pb2.GeneratePayload(**values)


def fields_of(violations: list[FieldViolation]) -> list[str]:
    return [v.field for v in violations]


@pytest.mark.parametrize(
    ("user_id", "fragment"),
    [
        ("", "must not be empty"),
        ("u" * 129, "at most 128 characters, got 129"),
        ("alice:admin", "must not contain ':'"),
        ("alice\nbob", "control characters (U+000A at position 5)"),
        ("alice\x00", "control characters (U+0000 at position 5)"),
        ("alice\x7f", "control characters (U+007F at position 5)"),
        ("alice\x85", "control characters (U+0085 at position 5)"),
        ("\x9f", "control characters (U+009F at position 0)"),
    ],
)
def test_bad_user_id_is_one_violation(user_id: str, fragment: str) -> None:
    """An empty, too long, ':'-holding or control-character user id is one user_id violation."""
    violations = check_user_id(user_id)

    assert fields_of(violations) == ["user_id"]
    assert fragment in violations[0].description


@pytest.mark.parametrize(
    "user_id",
    ["alice", "u" * 128, "Jürgen Groß", "ユーザー42", "user@example.com", "a b\u00a0c"],
)
def test_valid_user_id_has_no_violations(user_id: str) -> None:
    """A user id of 1-128 printable characters, non-ASCII letters included, passes."""
    assert check_user_id(user_id) == []


def test_idempotency_key_length_limit() -> None:
    """An idempotency key of up to 256 characters passes; 257 is a violation naming the length."""
    assert check_idempotency_key("") == []
    assert check_idempotency_key("k" * 256) == []

    violations = check_idempotency_key("k" * 257)

    assert fields_of(violations) == ["idempotency_key"]
    assert "at most 256 characters, got 257" in violations[0].description


def test_missing_required_payload_fields_are_named() -> None:
    """Each missing required field of the payload is a violation named payload.<field>."""
    violations = check_payload(images_pb2.GeneratePayload())

    assert fields_of(violations) == ["payload.model", "payload.prompt", "payload.image_name"]
    assert all(v.description == "is required" for v in violations)


def test_one_missing_required_field_is_named_alone() -> None:
    """Only the missing required field is reported when the others are set."""
    payload = valid_payload()
    payload.ClearField("prompt")

    assert fields_of(check_payload(payload)) == ["payload.prompt"]


def test_max_len_exceeded_is_named() -> None:
    """A string longer than its max_len is a violation naming the field, limit and length."""
    violations = check_payload(valid_payload(model="m" * 257))

    assert fields_of(violations) == ["payload.model"]
    assert violations[0].description == "must be at most 256 long, got 257"


def test_max_len_applies_to_optional_fields() -> None:
    """An optional string that is set is held to its max_len too."""
    violations = check_payload(valid_payload(negative_prompt="n" * 8001))

    assert fields_of(violations) == ["payload.negative_prompt"]


def test_max_len_boundary_passes() -> None:
    """A string exactly at its max_len passes."""
    assert check_payload(valid_payload(model="m" * 256)) == []


@pytest.mark.parametrize(
    ("width", "description"),
    [(63, "must be at least 64, got 63"), (8193, "must be at most 8192, got 8193")],
)
def test_number_outside_bounds_is_named(width: int, description: str) -> None:
    """A width below its min or above its max is a violation naming payload.width."""
    violations = check_payload(valid_payload(width=width))

    assert violations == [FieldViolation("payload.width", description)]


def test_explicit_zero_width_is_below_min() -> None:
    """An optional width explicitly set to 0 is present and checked against its min."""
    violations = check_payload(valid_payload(width=0))

    assert fields_of(violations) == ["payload.width"]


@pytest.mark.parametrize("width", [64, 1024, 8192])
def test_number_within_bounds_passes(width: int) -> None:
    """A width within [64, 8192] passes."""
    assert check_payload(valid_payload(width=width, height=width)) == []


def test_valid_payload_has_no_violations() -> None:
    """A payload with every required field set and optional ones within bounds passes."""
    assert check_payload(valid_payload(negative_prompt="blur", seed=0)) == []


def test_violations_use_the_given_prefix() -> None:
    """Violations are named under the prefix the caller passes."""
    violations = check_payload(images_pb2.GeneratePayload(model="m", prompt="p"), "tasks[0]")

    assert fields_of(violations) == ["tasks[0].image_name"]
