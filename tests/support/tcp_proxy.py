"""A TCP proxy a test controls: count, cut and refuse the connections it forwards.

For what a broker or a gateway must survive that no real fault reproduces on demand: one
particular connection going away while the others stay, or new connections being refused.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

from tests.support.waits import hang_guard

__all__ = ["TcpProxy"]


@dataclass
class _Link:
    client: asyncio.StreamWriter
    server: asyncio.StreamWriter
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def cut(self) -> None:
        for writer in (self.client, self.server):
            transport = writer.transport
            if not transport.is_closing():
                transport.abort()  # a reset, as a dying peer or network gives


class TcpProxy:
    """Forwards 127.0.0.1:<port> to `target_host:target_port`; `async with` to run it."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self.links: list[_Link] = []  # every connection forwarded, in order
        self.refusing = False
        self.port = 0
        # Connections (by the order they arrived, from 0) held before reaching the target
        # until `release()`: a peer that is slow to answer one particular client.
        self.hold: set[int] = set()
        self.arrived = 0
        self._released = asyncio.Event()
        self._arrival = asyncio.Condition()

    async def __aenter__(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._server is not None:
            self._server.close()
        self.cut_all()
        tasks = [task for link in self.links for task in link.tasks]
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    @property
    def accepted(self) -> int:
        """How many connections were forwarded so far."""
        return len(self.links)

    def release(self) -> None:
        """Let the held connections through."""
        self._released.set()

    async def until_arrived(self, count: int) -> None:
        """Until `count` connections have arrived (held ones included)."""
        async with hang_guard(f"{count} connections arrived at the proxy"), self._arrival:
            await self._arrival.wait_for(lambda: self.arrived >= count)

    def cut(self, index: int) -> None:
        """Reset the `index`-th connection (0: the first accepted) on both sides."""
        self.links[index].cut()

    def cut_all(self) -> None:
        """Reset every connection forwarded so far (with `refusing`: the target is gone)."""
        for link in self.links:
            link.cut()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.transport.abort()
            return
        index = self.arrived
        async with self._arrival:
            self.arrived += 1
            self._arrival.notify_all()
        if index in self.hold:
            await self._released.wait()
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        link = _Link(writer, upstream_writer)
        self.links.append(link)
        link.tasks = [
            asyncio.create_task(_pipe(reader, upstream_writer)),
            asyncio.create_task(_pipe(upstream_reader, writer)),
        ]


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    if not writer.transport.is_closing():
        writer.transport.abort()
