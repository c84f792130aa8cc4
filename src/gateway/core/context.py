"""What a transport knows about a call, handed to every method and middleware.

Both transports build a `CallContext` (the gRPC servicer context, or the HTTP request with its
`Grpc-Timeout`, `Grpc-Metadata-*` and forwarded headers) and nothing below them sees a
transport's own objects. Middlewares read it and may fill in what they establish (the
authenticated client).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["Authenticate", "CallContext", "PeerIdentity", "TraceContext", "Transport"]

Transport = Literal["grpc", "http"]

# A request id comes from the client and is logged with each line of its call: bounded.
_LOGGED_REQUEST_ID_LENGTH = 128


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    """What the client's TLS certificate says about it, when it presented one (mutual TLS)."""

    dns_names: tuple[str, ...] = ()
    common_name: str | None = None


# W3C Trace Context (https://www.w3.org/TR/trace-context/): version-trace_id-parent_id-flags,
# lower-case hex; version 00 is exactly that (55 characters), ff is invalid. A later version
# may append fields after a dash: read as the spec says, its first 55 characters when followed
# by the end or a dash, and forwarded as version 00 with those four fields only.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_TRACEPARENT_LENGTH = 55
# tracestate: at most 32 comma-separated members key=value, and at most 512 characters.
_TRACESTATE_MAX_LENGTH = 512
_TRACESTATE_MAX_MEMBERS = 32
_TRACESTATE_KEY = re.compile(r"[a-z0-9][_0-9a-z\-*/]{0,255}(@[a-z][_0-9a-z\-*/]{0,13})?")
_TRACESTATE_VALUE = re.compile(r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]")
# The optional white space around a member: spaces and tabs, nothing else.
_TRACESTATE_SPACE = " \t"


@dataclass(frozen=True, slots=True)
class TraceContext:
    """The W3C trace context the call came with, when it is well-formed."""

    traceparent: str
    tracestate: str = ""

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str]) -> TraceContext | None:
        """The call's trace context; None when it sent none or a malformed `traceparent`.

        A malformed one is dropped, not forwarded (the W3C rule: start a new trace), and of a
        later version only its version 00 fields are kept, so that no client can write
        arbitrary text into every message's headers. A malformed `tracestate` is dropped alone.
        """
        traceparent = _traceparent(metadata.get("traceparent", ""))
        if traceparent is None:
            return None
        tracestate = metadata.get("tracestate", "")
        return cls(traceparent, tracestate if _valid_tracestate(tracestate) else "")


def _traceparent(text: str) -> str | None:
    """The traceparent to forward: version 00 as it came, a later version cut to its version
    00 fields (with version 00); None when it is malformed."""
    match = _TRACEPARENT.match(text)
    if match is None:
        return None
    version, trace_id, parent_id, flags = match.groups()
    if version == "ff" or trace_id == "0" * 32 or parent_id == "0" * 16:
        return None
    rest = text[_TRACEPARENT_LENGTH:]
    if rest and (version == "00" or not rest.startswith("-")):
        return None
    return f"00-{trace_id}-{parent_id}-{flags}"


def _valid_tracestate(text: str) -> bool:
    if not text or len(text) > _TRACESTATE_MAX_LENGTH:
        return False
    members = [
        member.strip(_TRACESTATE_SPACE)
        for member in text.split(",")
        if member.strip(_TRACESTATE_SPACE)
    ]
    if not members or len(members) > _TRACESTATE_MAX_MEMBERS:
        return False
    for member in members:
        key, equals, value = member.partition("=")
        if not (equals and _TRACESTATE_KEY.fullmatch(key) and _TRACESTATE_VALUE.fullmatch(value)):
            return False
    return True


class CallContext:
    """One call: its transport, peer, deadline, metadata and trace context."""

    __slots__ = (
        "client",
        "deadline",
        "metadata",
        "method",
        "peer",
        "peer_identity",
        "trace",
        "transport",
    )

    def __init__(
        self,
        transport: Transport,
        *,
        method: str = "",
        peer: str = "",
        peer_identity: PeerIdentity | None = None,
        deadline: float | None = None,
        metadata: Mapping[str, str] | None = None,
        trace: TraceContext | None = None,
    ) -> None:
        self.transport: Transport = transport
        # The RPC as gRPC names it on the wire: /images.v1.ImagesService/Generate.
        self.method = method
        # The client's address as the transport reports it (ipv4:127.0.0.1:5555).
        self.peer = peer
        self.peer_identity = peer_identity
        # time.monotonic() at the caller's deadline; None when it set none.
        self.deadline = deadline
        # Call metadata with lower-case names (x-request-id, authorization, ...).
        self.metadata: Mapping[str, str] = metadata if metadata is not None else {}
        self.trace = trace
        # The authenticated client, once a middleware established it; None without auth.
        self.client: Any = None

    @classmethod
    def start(
        cls,
        transport: Transport,
        *,
        method: str,
        peer: str,
        timeout: float | None,
        metadata: Mapping[str, str],
        peer_identity: PeerIdentity | None = None,
    ) -> CallContext:
        """A call that arrived just now, with `timeout` seconds to go (None: no deadline)."""
        return cls(
            transport,
            method=method,
            peer=peer,
            peer_identity=peer_identity,
            deadline=None if timeout is None else time.monotonic() + timeout,
            metadata=metadata,
            trace=TraceContext.from_metadata(metadata),
        )

    @property
    def request_id(self) -> str | None:
        """The client's X-Request-Id, cut to a length fit for every log line of the call."""
        request_id = self.metadata.get("x-request-id")
        return request_id[:_LOGGED_REQUEST_ID_LENGTH] if request_id else None

    def remaining(self) -> float | None:
        """Seconds left before the deadline (0 when past it), or None without one."""
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())


# Authenticates a call for what is outside the middleware seam (reflection, the REST shim
# before it reads a body): sets the call's client, or raises UNAUTHENTICATED.
Authenticate = Callable[[CallContext], object]
