"""Metrics of the request path: every task's outcome, and the publishes awaiting the broker."""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Gauge

from gateway.core.context import CallContext
from gateway.core.middleware import Middleware
from gateway.errors import Code

__all__ = ["IN_FLIGHT", "IN_FLIGHT_LIMIT", "TASKS", "TaskMetrics"]

TASKS = Counter(
    "task_gateway_tasks_total",
    "Tasks by outcome: code is the gRPC code's name, OK for a task the broker confirmed; "
    "task_type is _unknown for one the gateway does not route.",
    ("task_type", "transport", "code"),
)
IN_FLIGHT = Gauge(
    "task_gateway_publishes_in_flight",
    "Publishes sent and awaiting the broker's answer, all workers together.",
    multiprocess_mode="livesum",
)
IN_FLIGHT_LIMIT = Gauge(
    "task_gateway_publishes_in_flight_limit",
    "The most publishes that may await the broker's answer (broker.max_in_flight of every "
    "worker together); past it tasks are refused RESOURCE_EXHAUSTED.",
    multiprocess_mode="livesum",
)


class TaskMetrics(Middleware):
    """Counts every task's outcome, on both transports, the refused ones included."""

    def __init__(self) -> None:
        # The series by its labels: found once, not looked up (and locked) on every task. The
        # labels come from the route and method tables, so the dict stays small.
        self._series: dict[tuple[str, str, Code], Any] = {}

    def settled(self, call: CallContext, task_type: str, code: Code) -> None:
        key = (task_type, call.transport, code)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = TASKS.labels(task_type, call.transport, code.name)
        series.inc()
