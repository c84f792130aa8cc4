"""gateway.core.context: the call context and the W3C trace context it accepts."""

from __future__ import annotations

import pytest

from gateway.core.context import CallContext, TraceContext

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_a_version_00_traceparent_is_kept_as_it_came() -> None:
    """The version this gateway knows is forwarded unchanged."""
    assert TraceContext.from_metadata({"traceparent": TRACEPARENT}) == TraceContext(TRACEPARENT)


@pytest.mark.parametrize(
    "traceparent",
    [
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-a-future-field",
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-<script>any text; DROP",
        "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-" + "x" * 300,
    ],
)
def test_a_later_version_is_cut_to_its_version_00_fields(traceparent: str) -> None:
    """A later version is read as W3C says (its first four fields, followed by the end or a
    dash) and forwarded as version 00 with those fields only: none of what follows them."""
    trace = TraceContext.from_metadata({"traceparent": traceparent})

    assert trace == TraceContext("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")


@pytest.mark.parametrize(
    "traceparent",
    [
        "",
        "garbage",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # version ff is invalid
        TRACEPARENT + "-extra",  # version 00 has exactly four fields
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # zero parent id
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # upper case
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",  # flags not followed by -
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",  # shorter than 55
        "01-00000000000000000000000000000000-00f067aa0ba902b7-01-x",  # zero trace id
    ],
)
def test_a_malformed_traceparent_is_dropped(traceparent: str) -> None:
    """Anything but a W3C traceparent gives no trace context at all."""
    assert TraceContext.from_metadata({"traceparent": traceparent, "tracestate": "a=b"}) is None


@pytest.mark.parametrize(
    ("tracestate", "kept"),
    [
        ("congo=t61rcWkgMzE", True),
        ("rojo=00f067aa0ba902b7, congo=t61rcWkgMzE", True),
        ("tenant@vendor=value", True),
        ("no-equals-sign", False),
        ("Upper=case-key", False),
        (",".join(f"k{i}=v" for i in range(33)), False),  # over 32 members
        ("k=" + "v" * 600, False),  # over 512 characters
        ("congo=t61rcWkgMzE\r\n", False),  # whitespace other than spaces and tabs
        ("congo=t61rcWkgMzE,\x0b", False),
    ],
)
def test_tracestate_is_kept_only_when_well_formed(tracestate: str, kept: bool) -> None:
    """A malformed tracestate is dropped alone; the traceparent stays."""
    trace = TraceContext.from_metadata({"traceparent": TRACEPARENT, "tracestate": tracestate})

    assert trace == TraceContext(TRACEPARENT, tracestate if kept else "")


def test_request_id_is_cut_to_128_characters() -> None:
    """The request id a call carries into every log line is bounded."""
    call = CallContext.start(
        "http", method="/m", peer="p", timeout=None, metadata={"x-request-id": "x" * 1000}
    )

    assert call.request_id == "x" * 128
