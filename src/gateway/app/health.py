"""Whether this gateway can publish, as every worker process of it answers the probes.

Each worker connects to RabbitMQ on its own, and a probe (gRPC health, `/readyz`) lands on
whichever worker the kernel gives its connection. So the answer is the gateway's, not the
worker's: SERVING and ready only while *every* worker's broker is connected. The workers
share one byte each in memory mapped before the fork (`gateway.app.workers.WorkerStates`);
each writes its own and reads the others'.

Serving updates reach the transports one at a time, always the latest: a quick down/up flip
cannot leave a stale state behind.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from gateway.app.workers import WorkerStates
from gateway.broker import Broker
from gateway.contracts.routing import RouteTable
from gateway.errors import GatewayError

__all__ = ["Health"]

# Told True when the gateway can serve, False when it cannot.
ServingListener = Callable[[bool], Awaitable[None]]

# How often a worker looks at the other workers' states (its own changes are seen at once).
_POLL_SECONDS = 0.1


class Health:
    def __init__(
        self,
        broker: Broker,
        routes: RouteTable,
        *,
        workers: WorkerStates | None = None,
        worker_index: int = 0,
    ) -> None:
        self._broker = broker
        self._exchanges = sorted({route.exchange for route in routes.values()})
        self._workers = workers if workers is not None else WorkerStates(1)
        self._index = worker_index
        self._listeners: list[ServingListener] = []
        self._changed = asyncio.Event()
        self._updater: asyncio.Task[None] | None = None
        self.stopping = False

    def watch(self, listener: ServingListener) -> None:
        """Tell `listener` whether the gateway can serve, now and on every change."""
        self._listeners.append(listener)

    def start(self) -> None:
        """Follow the broker and the other workers from now on."""
        self._broker.add_state_listener(self._on_broker_state)
        self._updater = asyncio.create_task(self._deliver(), name="health-updater")

    async def stop(self) -> None:
        """Stop following; a serving update under way is finished first."""
        if self._updater is not None:
            self._updater.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._updater
        self._workers.set(self._index, False)

    @property
    def serving(self) -> bool:
        """Every worker of the gateway can publish (their brokers are connected)."""
        return not self.stopping and not self._workers.disconnected()

    async def readiness(self) -> str | None:
        """None when ready to publish (every worker's broker connected, every exchange
        present), else why not."""
        if self.stopping:
            return "shutting down"
        if not self._broker.connected:
            return f"not connected to {self._broker.description}"
        others = self._workers.disconnected()
        if others:
            workers = ", ".join(str(worker) for worker in others)
            return f"worker {workers} of {self._workers.count} not connected to the broker yet"
        try:
            missing = [
                exchange
                for exchange in self._exchanges
                if not await self._broker.exchange_exists(exchange)
            ]
        except GatewayError as error:
            return error.message
        if missing:
            return f"exchanges missing on the broker: {', '.join(missing)}"
        return None

    def _on_broker_state(self, connected: bool) -> None:
        self._workers.set(self._index, connected)
        self._changed.set()

    async def _deliver(self) -> None:
        """Give the listeners the latest serving state whenever it changes, one at a time."""
        delivered: bool | None = None
        while True:
            serving = self.serving
            if serving != delivered:
                for listener in self._listeners:
                    await listener(serving)
                delivered = serving
                continue  # it may have changed again while the listeners ran
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_POLL_SECONDS):
                    await self._changed.wait()
            self._changed.clear()
