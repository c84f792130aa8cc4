"""What a transport knows about a call, handed to every method and middleware.

Both transports build a `CallContext` (the gRPC servicer context, or the HTTP request with its
`Grpc-Timeout`, `Grpc-Metadata-*` and forwarded headers) and nothing below them sees a
transport's own objects. Middlewares read it and may fill in what they establish (the
authenticated client).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["CallContext", "PeerIdentity", "TraceContext", "Transport"]

Transport = Literal["grpc", "http"]


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    """What the client's TLS certificate says about it, when it presented one (mutual TLS)."""

    dns_names: tuple[str, ...] = ()
    common_name: str | None = None


@dataclass(frozen=True, slots=True)
class TraceContext:
    """The W3C trace context the call came with."""

    traceparent: str
    tracestate: str = ""

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str]) -> TraceContext | None:
        traceparent = metadata.get("traceparent")
        if not traceparent:
            return None
        return cls(traceparent, metadata.get("tracestate", ""))


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
        return self.metadata.get("x-request-id")

    def remaining(self) -> float | None:
        """Seconds left before the deadline (0 when past it), or None without one."""
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())
