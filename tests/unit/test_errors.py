"""What an error may say: however hostile the request, its status stays small.

grpc carries the status (message and google.rpc.Status details) in the trailers, which a
client refuses past 8 KB (RESOURCE_EXHAUSTED "received metadata size exceeds limit"); the
REST shim writes it as the body and the log writes the message. So an error names at most 20
violations and echoes client text cut short, and the whole status stays within about 4 KB.
"""

from __future__ import annotations

from gateway.core.status import to_status_proto
from gateway.errors import Code, FieldViolation, GatewayError, invalid_argument

# Well under grpc's default 8 KB limit on the metadata a client receives.
STATUS_BUDGET = 4096


def test_at_most_twenty_violations_are_named_and_one_says_there_are_more() -> None:
    violations = [FieldViolation(f"payload.key{i}", "unknown field") for i in range(1000)]

    error = invalid_argument(violations)

    assert error.code is Code.INVALID_ARGUMENT
    assert [v.field for v in error.violations[:20]] == [f"payload.key{i}" for i in range(20)]
    assert len(error.violations) == 21
    assert error.violations[-1].field == "…"
    assert "more" in error.violations[-1].description
    assert error.message.startswith("invalid request: payload.key0: unknown field; payload.key1")
    assert error.message.endswith("…"), "the summary is cut, the details name the violations"
    assert to_status_proto(error).ByteSize() < STATUS_BUDGET


def test_twenty_violations_are_all_named() -> None:
    violations = [FieldViolation(f"f{i}", "wrong") for i in range(20)]

    error = invalid_argument(violations)

    assert error.violations == tuple(violations)


def test_long_violations_are_cut_so_the_status_stays_small() -> None:
    """Twenty violations of 4 KB each (a client's key as the field, its value described)."""
    violations = [FieldViolation("k" * 4000, "d" * 4000) for _ in range(20)]

    error = invalid_argument(violations)

    assert to_status_proto(error).ByteSize() < STATUS_BUDGET
    first = error.violations[0]
    assert first.field.startswith("kkk")
    assert first.field.endswith("…")
    assert first.description.startswith("ddd")
    assert first.description.endswith("…")


def test_a_long_message_is_cut() -> None:
    """A message that echoes 900 KB of a client's text (or anything else) is cut."""
    error = GatewayError(Code.INVALID_ARGUMENT, f"unknown task type {'x' * 900_000!r}")

    assert error.message.startswith("unknown task type 'xxx")
    assert error.message.endswith("…")
    assert len(error.message.encode()) <= 1024


def test_non_ascii_text_is_bounded_in_bytes() -> None:
    """grpc percent-encodes the message byte by byte: the bound counts UTF-8 bytes."""
    violations = [FieldViolation("é" * 3000, "😀" * 3000) for _ in range(30)]

    error = invalid_argument(violations)

    status = to_status_proto(error)
    assert status.ByteSize() < STATUS_BUDGET
    assert len(status.message.encode()) * 3 + status.ByteSize() * 4 / 3 < 8192 - 1024


def test_lone_surrogates_are_measured_and_cut_without_failing() -> None:
    """A JSON key may hold a lone surrogate ("\\ud800"), which UTF-8 cannot encode."""
    error = invalid_argument([FieldViolation("\ud800" * 5000, "bad")])

    assert to_status_proto(error).ByteSize() < STATUS_BUDGET
