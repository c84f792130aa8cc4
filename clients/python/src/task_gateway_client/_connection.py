"""How a client reaches the gateway (plaintext or TLS, optionally mutual; a bearer token), and
how long a task may take: what the sync and the asyncio clients are made with."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol, TypeVar

import grpc

from task_gateway_client._retry import Attempts, RetryPolicy
from task_gateway_client._tasks import Task

__all__ = ["DEFAULT_DEADLINE", "Connection", "TLSConfig"]

# Seconds a task may take from the call to its outcome, retries included. The gateway answers
# once RabbitMQ confirmed; its own cap on waiting for a confirm is 10 s by default.
DEFAULT_DEADLINE = 15.0

# PEM contents, or the path of a PEM file.
PemSource = bytes | str | os.PathLike[str]

ChannelT_co = TypeVar("ChannelT_co", covariant=True)


class ChannelApi(Protocol[ChannelT_co]):
    """What makes a client's channel: the `grpc` module, or `grpc.aio`."""

    def insecure_channel(
        self, target: str, options: Sequence[tuple[str, Any]] | None = ...
    ) -> ChannelT_co: ...

    def secure_channel(
        self,
        target: str,
        credentials: grpc.ChannelCredentials,
        options: Sequence[tuple[str, Any]] | None = ...,
    ) -> ChannelT_co: ...


@dataclass(frozen=True)
class TLSConfig:
    """TLS to the gateway. Each PEM is given as bytes (its contents) or as a path to read.

    With no `ca` the system's trusted roots verify the gateway; `cert` and `key` (both or
    neither) are the client's own identity for mutual TLS.
    """

    ca: PemSource | None = None
    cert: PemSource | None = None
    key: PemSource | None = None
    # The name to check the gateway's certificate against, when it is not the target's host
    # (e.g. connecting by IP address, or through a tunnel).
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("tls.cert and tls.key go together: give both for mutual TLS, or none")

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=_read("tls.ca", self.ca),
            private_key=_read("tls.key", self.key),
            certificate_chain=_read("tls.cert", self.cert),
        )


@dataclass(frozen=True)
class Connection:
    """A client's settings, checked once: its channel's, and those of every call and task."""

    credentials: grpc.ChannelCredentials | None  # None: plaintext
    arguments: tuple[tuple[str, Any], ...]  # the channel's options
    metadata: tuple[tuple[str, str], ...]  # sent with every call
    deadline: float
    retry: RetryPolicy
    connections: int  # how many connections to the gateway the client opens

    @classmethod
    def of(
        cls,
        tls: TLSConfig | None,
        token: str | None,
        deadline: float,
        retry: RetryPolicy | None,
        connections: int = 1,
    ) -> Connection:
        return cls(
            credentials=None if tls is None else tls.credentials(),
            arguments=_channel_arguments(tls, _checked_connections(connections)),
            metadata=_auth_metadata(token),
            deadline=_checked_deadline(deadline),
            retry=retry or RetryPolicy(),
            connections=connections,
        )

    def channels(self, target: str, api: ChannelApi[ChannelT_co]) -> list[ChannelT_co]:
        """The client's channels to `target`, one per connection, made by `api` (`grpc` or
        `grpc.aio`)."""
        return [self._channel(target, api) for _ in range(self.connections)]

    def _channel(self, target: str, api: ChannelApi[ChannelT_co]) -> ChannelT_co:
        if self.credentials is None:
            return api.insecure_channel(target, options=self.arguments)
        return api.secure_channel(target, self.credentials, options=self.arguments)

    def attempts(
        self, task: Task, deadline: float | None = None, *, now: float | None = None
    ) -> Attempts:
        """The attempts of a task starting `now` (by default now), within `deadline` or, when
        it is None, the client's. Raises ValueError for a deadline that cannot work."""
        seconds = self.deadline if deadline is None else _checked_deadline(deadline)
        start = time.monotonic() if now is None else now
        return Attempts(self.retry, start + seconds, task.idempotency_key)


def _checked_deadline(deadline: float) -> float:
    """`deadline`, if it is a positive finite number of seconds; else a ValueError naming it."""
    if not (isinstance(deadline, int | float) and math.isfinite(deadline) and deadline > 0):
        raise ValueError(f"deadline must be a positive finite number of seconds, got {deadline!r}")
    return deadline


def _checked_connections(connections: int) -> int:
    """`connections`, if it is a whole number from 1; else a ValueError naming it."""
    if isinstance(connections, bool) or not isinstance(connections, int) or connections < 1:
        raise ValueError(f"connections must be a whole number from 1 up, got {connections!r}")
    return connections


def _channel_arguments(tls: TLSConfig | None, connections: int) -> tuple[tuple[str, Any], ...]:
    """The channel's options: who we are, and the name to verify when overridden."""
    options: list[tuple[str, Any]] = [
        ("grpc.primary_user_agent", _user_agent()),
        # While the gateway cannot be reached, calls fail at once (and are retried by us) until
        # grpc reconnects; its own reconnect backoff grows to 120 s by default, which would
        # keep a client failing long after a gateway restart. 5 s at most.
        ("grpc.max_reconnect_backoff_ms", 5000),
        # A name with several addresses (a headless Kubernetes Service: one per gateway pod)
        # gets its calls spread over all of them, not sent to the first that answered.
        ("grpc.lb_policy_name", "round_robin"),
    ]
    if connections > 1:
        # Channels with the same target and options share one connection through grpc's
        # global subchannel pool; a pool of their own gives each its own connection.
        options.append(("grpc.use_local_subchannel_pool", 1))
    if tls is not None and tls.server_name:
        options.append(("grpc.ssl_target_name_override", tls.server_name))
    return tuple(options)


def _auth_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """The metadata every call carries: `authorization: Bearer <token>` when there is a token.

    Sent as metadata rather than call credentials so that it works on plaintext channels too
    (a gateway behind a TLS-terminating proxy, or in development).
    """
    if token is None:
        return ()
    if not token or not token.isascii() or not token.isprintable() or " " in token:
        raise ValueError("token must be non-empty printable ASCII without spaces")
    return (("authorization", f"Bearer {token}"),)


def _read(name: str, source: PemSource | None) -> bytes | None:
    if source is None or isinstance(source, bytes):
        return source
    try:
        return Path(source).read_bytes()
    except OSError as exc:
        raise ValueError(f"{name}: cannot read {os.fspath(source)!r}: {exc.strerror}") from None


def _user_agent() -> str:
    try:
        return f"task-gateway-client/{metadata.version('task-gateway-client')}"
    except metadata.PackageNotFoundError:  # run from a checkout, not installed
        return "task-gateway-client"
