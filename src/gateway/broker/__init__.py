"""Broker backends behind one small interface: RabbitMQ (`rabbit`) and in-memory (`memory`)."""

from gateway.broker.base import Broker, Envelope, StateListener

__all__ = ["Broker", "Envelope", "StateListener"]
