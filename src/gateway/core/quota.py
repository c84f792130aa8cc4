"""Per-client rate quotas that hold for the gateway instance as a whole.

A client's `rate_per_second` and `burst` (its clients-file entry) are a token bucket: a task
takes a token, tokens come back at the rate, and at most `burst` are saved up. The buckets
live in memory shared by every worker (made before the fork, as the workers' states are),
under one lock, so a client gets the same quota whichever worker its connections land on.

Over it, a task is RESOURCE_EXHAUSTED with the time until a token is free (google.rpc
RetryInfo, and Retry-After on HTTP 429); a refused task takes nothing, and each task of a
batch or a stream counts.
"""

from __future__ import annotations

import hashlib
import mmap
import multiprocessing
import struct
import time

from gateway.contracts.routing import Route
from gateway.core.context import CallContext
from gateway.core.middleware import Middleware
from gateway.errors import Code, GatewayError

__all__ = ["Buckets", "Quota"]

# A slot: the client's key (16 bytes of the SHA-256 of its name), its tokens, when they were
# last counted (time.monotonic(), the same clock in every process of the host).
_SLOT = struct.Struct("16sdd")
_EMPTY = bytes(16)


class Buckets:
    """Token buckets by client, in memory shared across fork; `slots` clients at most."""

    def __init__(self, slots: int = 4096) -> None:
        self._slots = slots
        self._memory = mmap.mmap(-1, slots * _SLOT.size)  # MAP_SHARED | MAP_ANONYMOUS
        self._lock = multiprocessing.Lock()  # a POSIX semaphore: shared across fork too

    def take(self, client: str, rate: float, burst: int) -> float | None:
        """Take one token: None when there was one, else the seconds until there is."""
        key = hashlib.sha256(client.encode()).digest()[:16]
        with self._lock:
            now = time.monotonic()
            offset = self._slot(key)
            found, tokens, stamp = _SLOT.unpack_from(self._memory, offset)
            tokens = float(burst) if found != key else min(burst, tokens + (now - stamp) * rate)
            if tokens >= 1.0:
                _SLOT.pack_into(self._memory, offset, key, tokens - 1.0, now)
                return None
            _SLOT.pack_into(self._memory, offset, key, tokens, now)
            return (1.0 - tokens) / rate

    def _slot(self, key: bytes) -> int:
        """The slot of a key: its own, or the first free one from its hash (open addressing)."""
        start = int.from_bytes(key[:8], "little") % self._slots
        for step in range(self._slots):
            offset = ((start + step) % self._slots) * _SLOT.size
            found = self._memory[offset : offset + 16]
            if found in (key, _EMPTY):
                return offset
        raise RuntimeError(f"more than {self._slots} clients with a rate quota")


class Quota(Middleware):
    """Each task of a client with a rate takes a token, or is refused until one is free."""

    def __init__(self, buckets: Buckets) -> None:
        self._buckets = buckets

    def admit(self, call: CallContext, route: Route, user_id: str) -> None:
        client = call.client
        if client is None or client.rate_per_second is None:
            return
        wait = self._buckets.take(client.name, client.rate_per_second, client.burst)
        if wait is not None:
            raise GatewayError(
                Code.RESOURCE_EXHAUSTED,
                f"client {client.name!r} is over its quota of {client.rate_per_second:g} tasks "
                f"per second (burst {client.burst}); retry in {wait:.3g}s",
                retry_after=wait,
            )
