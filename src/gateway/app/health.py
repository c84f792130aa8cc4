"""Whether this gateway can publish, for the probes of both transports.

Readiness (`/readyz`) asks the broker: connected, every routed exchange present, not
shutting down. Serving (gRPC health) follows the broker's connection state as it changes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from gateway.broker import Broker
from gateway.contracts.routing import RouteTable
from gateway.errors import GatewayError

__all__ = ["Health"]

# Told True when the gateway can serve, False when it cannot.
ServingListener = Callable[[bool], Awaitable[None]]


class Health:
    def __init__(self, broker: Broker, routes: RouteTable) -> None:
        self._broker = broker
        self._exchanges = sorted({route.exchange for route in routes.values()})
        self._listeners: list[ServingListener] = []
        self._updates: set[asyncio.Task[None]] = set()
        self.stopping = False

    def watch(self, listener: ServingListener) -> None:
        """Tell `listener` whether the gateway can serve, now and on every change."""
        self._listeners.append(listener)
        if len(self._listeners) == 1:
            self._broker.add_state_listener(self._on_broker_state)
        else:
            self._notify(listener, self._broker.connected)

    async def readiness(self) -> str | None:
        """None when ready to publish (broker connected, every exchange present), else why not."""
        if self.stopping:
            return "shutting down"
        if not self._broker.connected:
            return f"not connected to {self._broker.description}"
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

    async def settled(self) -> None:
        """Until every serving update under way has been delivered."""
        await asyncio.gather(*self._updates, return_exceptions=True)

    def _on_broker_state(self, connected: bool) -> None:
        for listener in self._listeners:
            self._notify(listener, connected)

    def _notify(self, listener: ServingListener, serving: bool) -> None:
        update = asyncio.ensure_future(listener(serving))
        self._updates.add(update)
        update.add_done_callback(self._updates.discard)
