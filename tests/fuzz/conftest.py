"""A gateway on a background event loop, so that hypothesis drives it from plain sync tests.

Hypothesis and pytest-asyncio's per-test event loops do not mix; here the gateway runs on a
loop of its own in a thread for the whole module, and tests talk to it over real sockets
with blocking clients. The in-memory broker counts what was queued, so a test can tell that
a rejected request published nothing (the fuzz targets input handling, which is the same
whatever the broker).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from gateway.app.server import Gateway
from gateway.broker.memory import Definitions, MemoryBroker
from tests.conftest import DEFINITIONS, make_settings


@dataclass
class FuzzTarget:
    gateway: Gateway
    broker: MemoryBroker

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.gateway.grpc_port}"

    @property
    def http_port(self) -> int:
        assert self.gateway.http_port is not None
        return self.gateway.http_port

    def queued(self) -> int:
        return sum(len(queue.messages) for queue in self.broker.queues.values())


@pytest.fixture(scope="module")
def target() -> Iterator[FuzzTarget]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fuzz-gateway", daemon=True)
    thread.start()

    async def start() -> FuzzTarget:
        broker = MemoryBroker(Definitions.load(DEFINITIONS))
        gateway = Gateway(make_settings(), broker=broker)
        await gateway.start()
        return FuzzTarget(gateway, broker)

    running = asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    yield running
    asyncio.run_coroutine_threadsafe(running.gateway.stop(grace=1.0), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()
