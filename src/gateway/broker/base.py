"""What the gateway needs from a broker: publish one message and say when it is confirmed."""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from gateway.broker import metrics

__all__ = ["Broker", "Envelope", "StateListener"]

# Called with True when the broker becomes usable and False when it is lost.
StateListener = Callable[[bool], None]


@dataclass(frozen=True)
class Envelope:
    """One message and where it goes, in AMQP terms but free of any client library."""

    exchange: str
    routing_key: str
    body: bytes
    message_id: str
    type: str
    timestamp: datetime
    app_id: str
    headers: Mapping[str, str] = field(default_factory=dict)
    content_type: str = "application/json"


class Broker(abc.ABC):
    """A publisher with confirms. `publish` returns only once the broker took the message.

    Implementations raise `GatewayError`: FAILED_PRECONDITION for a missing exchange or an
    unroutable message, UNAVAILABLE when the broker is away or nacked the message,
    RESOURCE_EXHAUSTED when it blocks publishers.
    """

    #: Shown at start-up and in logs ("RabbitMQ at amqp://host:5672/vhost", "in-memory broker").
    description: str

    def __init__(self) -> None:
        self._listeners: list[StateListener] = []
        self._connected = False

    @property
    def connected(self) -> bool:
        """Whether a publish could reach the broker right now."""
        return self._connected

    def add_state_listener(self, listener: StateListener) -> None:
        """Call `listener(connected)` now and on every change."""
        self._listeners.append(listener)
        listener(self._connected)

    def _set_connected(self, connected: bool) -> None:
        if connected != self._connected:
            self._connected = connected
            metrics.CONNECTED.set(int(connected))
            for listener in self._listeners:
                listener(connected)

    @abc.abstractmethod
    async def start(self) -> None:
        """Begin connecting; returns without waiting for a broker that is away."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Disconnect; publishes still running fail."""

    @abc.abstractmethod
    async def exchange_exists(self, exchange: str) -> bool:
        """Whether the exchange exists; GatewayError UNAVAILABLE when the broker is away."""

    @abc.abstractmethod
    async def publish(self, envelope: Envelope) -> None:
        """Publish persistent and mandatory; return once confirmed, raise GatewayError if not."""
