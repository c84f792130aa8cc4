"""Authentication and authorisation: who is calling, and what they may publish.

Off by default (`auth.mode = "none"`); with `"required"` every call of the gateway's methods
needs a known client, on both transports alike (a middleware of the one seam):

- a bearer token (`authorization: Bearer <token>`, gRPC metadata or the HTTP header), known
  by its SHA-256 only and compared in constant time, or
- a client certificate (mutual TLS), matched by its SAN DNS names first, then its CN.

Each client may publish only the task types its glob patterns match, and, when it has one,
for user_ids its regular expression matches: a task outside them is PERMISSION_DENIED, only
that task in a batch or a stream. Messages say what is missing, never what exists: no list of
clients, nor of other clients' patterns. The catalog, and the task types an error message
lists, are those the caller may publish.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import re
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from google.protobuf.message import Message

from gateway.contracts.routing import Route
from gateway.core.context import CallContext, PeerIdentity
from gateway.core.method import Method, StreamHandler, UnaryHandler
from gateway.core.middleware import Middleware
from gateway.errors import Code, ConfigError, GatewayError

__all__ = ["Auth", "Client", "Clients", "parse_clients"]

_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")
_BEARER = re.compile(r"bearer\s+(\S+)\s*", re.IGNORECASE)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@dataclass(frozen=True)
class Client:
    """A caller the gateway knows, and what it may publish."""

    name: str
    token_sha256: bytes | None
    mtls_identity: str | None
    task_types: tuple[str, ...]
    user_ids: re.Pattern[str] | None
    rate_per_second: float | None
    burst: int | None

    def may_publish(self, task_type: str) -> bool:
        return any(fnmatch.fnmatchcase(task_type, pattern) for pattern in self.task_types)

    def may_publish_for(self, user_id: str) -> bool:
        return self.user_ids is None or self.user_ids.fullmatch(user_id) is not None


def parse_clients(raw: Mapping[str, Any], source: str) -> tuple[Client, ...]:
    """The clients of a parsed clients file; ConfigError naming the entry that is wrong."""
    unknown = set(raw) - {"clients"}
    if unknown:
        raise ConfigError(f"{source}: unknown key {sorted(unknown)[0]!r} (expected [[clients]])")
    entries = raw.get("clients", [])
    if not isinstance(entries, list):
        raise ConfigError(f"{source}: clients must be an array of tables ([[clients]])")
    clients: list[Client] = []
    seen: dict[str, str] = {}
    for index, entry in enumerate(entries):
        client = _client(entry, f"{source}: clients[{index}]")
        for key, kind in (
            (client.name, "name"),
            (client.token_sha256 and client.token_sha256.hex(), "token_sha256"),
            (client.mtls_identity, "mtls_identity"),
        ):
            if key:
                marker = f"{kind}={key}"
                if marker in seen:
                    raise ConfigError(
                        f"{source}: clients[{index}] ({client.name!r}): its {kind} is also "
                        f"that of {seen[marker]!r}"
                    )
                seen[marker] = client.name
        clients.append(client)
    return tuple(clients)


def _client(entry: Any, where: str) -> Client:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: must be a table")
    known = {
        "name",
        "token_sha256",
        "mtls_identity",
        "task_types",
        "user_ids",
        "rate_per_second",
        "burst",
    }
    for key in entry:
        if key not in known:
            raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(known))})")
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(f"{where}: name must be 1-128 letters, digits, '.', '_' or '-'")
    where = f"{where} ({name!r})"
    token = entry.get("token_sha256")
    if token is not None and (not isinstance(token, str) or not _HEX_SHA256.fullmatch(token)):
        raise ConfigError(f"{where}: token_sha256 must be 64 lower-case hex digits")
    identity = entry.get("mtls_identity")
    if identity is not None and (not isinstance(identity, str) or not identity):
        raise ConfigError(f"{where}: mtls_identity must be a non-empty string")
    if token is None and identity is None:
        raise ConfigError(f"{where}: needs token_sha256 or mtls_identity (or both)")
    task_types = entry.get("task_types")
    if (
        not isinstance(task_types, list)
        or not task_types
        or not all(isinstance(p, str) and p for p in task_types)
    ):
        raise ConfigError(f"{where}: task_types must be a non-empty list of glob patterns")
    pattern = entry.get("user_ids")
    user_ids = None
    if pattern is not None:
        if not isinstance(pattern, str):
            raise ConfigError(f"{where}: user_ids must be a regular expression")
        try:
            user_ids = re.compile(pattern)
        except re.error as exc:
            raise ConfigError(f"{where}: user_ids is not a regular expression: {exc}") from None
    rate = entry.get("rate_per_second")
    burst = entry.get("burst")
    if rate is not None and (
        not isinstance(rate, int | float) or isinstance(rate, bool) or not rate > 0
    ):
        raise ConfigError(f"{where}: rate_per_second must be a number greater than 0")
    if burst is not None and (not isinstance(burst, int) or isinstance(burst, bool) or burst < 1):
        raise ConfigError(f"{where}: burst must be an integer of 1 or more")
    if burst is not None and rate is None:
        raise ConfigError(f"{where}: burst needs rate_per_second")
    return Client(
        name=name,
        token_sha256=bytes.fromhex(token) if token is not None else None,
        mtls_identity=identity,
        task_types=tuple(task_types),
        user_ids=user_ids,
        rate_per_second=float(rate) if rate is not None else None,
        burst=burst if burst is not None else (max(1, round(rate)) if rate is not None else None),
    )


class Clients:
    """The known clients, replaced whole when the file is reloaded."""

    def __init__(self, clients: Iterable[Client] = ()) -> None:
        self.replace(clients)

    def replace(self, clients: Iterable[Client]) -> None:
        clients = tuple(clients)
        # Swapped in one assignment: a call in progress sees the old set or the new one.
        self._state = (
            tuple(c for c in clients if c.token_sha256 is not None),
            {c.mtls_identity: c for c in clients if c.mtls_identity is not None},
        )

    def by_token(self, token: str) -> Client | None:
        """The client whose token this is; every known hash is compared, in constant time."""
        digest = hashlib.sha256(token.encode()).digest()
        found = None
        for client in self._state[0]:
            assert client.token_sha256 is not None
            if hmac.compare_digest(digest, client.token_sha256):
                found = client
        return found

    def by_certificate(self, identity: PeerIdentity) -> Client | None:
        """The client a certificate names: by its SAN DNS names first, then by its CN."""
        by_identity = self._state[1]
        for name in identity.dns_names:
            if name in by_identity:
                return by_identity[name]
        if identity.common_name is not None:
            return by_identity.get(identity.common_name)
        return None


class Auth(Middleware):
    """Every method needs a known client; each task, one allowed to publish it."""

    def __init__(self, clients: Clients) -> None:
        self._clients = clients

    def authenticate(self, call: CallContext) -> Client:
        """The calling client, set on the call; UNAUTHENTICATED saying what is missing.

        A call already authenticated (the REST shim asks before reading the body) keeps its
        client: the token is not hashed and compared again."""
        if call.client is not None:
            return cast(Client, call.client)
        header = call.metadata.get("authorization")
        if header is not None:
            match = _BEARER.fullmatch(header)
            if match is None:
                raise _unauthenticated("the authorization header is not 'Bearer <token>'")
            client = self._clients.by_token(match.group(1))
            if client is None:
                raise _unauthenticated("token not recognised")
        elif call.peer_identity is not None:
            client = self._clients.by_certificate(call.peer_identity)
            if client is None:
                raise _unauthenticated("client certificate not recognised")
        else:
            raise _unauthenticated("no bearer token and no client certificate")
        call.client = client
        return client

    def unary(self, method: Method, handler: UnaryHandler) -> UnaryHandler:
        async def authenticated(request: Any, call: CallContext) -> Message:
            self.authenticate(call)
            return await handler(request, call)

        return authenticated

    def stream(self, method: Method, handler: StreamHandler) -> StreamHandler:
        async def authenticated(
            requests: AsyncIterator[Any], call: CallContext
        ) -> AsyncIterator[Message]:
            self.authenticate(call)
            async for response in handler(requests, call):
                yield response

        return authenticated

    def admit(self, call: CallContext, route: Route, user_id: str) -> None:
        client: Client = call.client
        if not client.may_publish(route.task_type):
            raise GatewayError(
                Code.PERMISSION_DENIED,
                f"client {client.name!r} may not publish {route.task_type!r}",
            )
        if not client.may_publish_for(user_id):
            raise GatewayError(
                Code.PERMISSION_DENIED,
                f"client {client.name!r} may not publish for this user_id",
            )

    def visible(self, call: CallContext, task_type: str) -> bool:
        client: Client | None = call.client
        return client is not None and client.may_publish(task_type)


def _unauthenticated(message: str) -> GatewayError:
    return GatewayError(Code.UNAUTHENTICATED, message)
