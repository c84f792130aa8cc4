"""Metrics of the broker: what it answered each publish, how fast, and its connection."""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Gauge, Histogram

__all__ = ["CONNECTED", "OUTCOMES", "PUBLISH_SECONDS", "RECONNECTS", "Outcome", "published"]

# ack: confirmed; nack: refused by a queue it routes to; returned: routed to no queue (a
# mandatory message); lost: the channel or connection went before the broker answered.
Outcome = str

# A publish waits for its confirm: milliseconds on a healthy broker, seconds when it is slow.
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

PUBLISH_SECONDS = Histogram(
    "task_gateway_publish_seconds",
    "From a publish to the broker's answer (confirm, nack or return), by exchange.",
    ("exchange",),
    buckets=_BUCKETS,
)
OUTCOMES = Counter(
    "task_gateway_broker_outcomes_total",
    "What the broker answered a publish: ack, nack, returned (unroutable) or lost (the channel "
    "or connection went before the answer).",
    ("exchange", "outcome"),
)
CONNECTED = Gauge(
    "task_gateway_broker_connected",
    "1 while every worker of the gateway is connected to the broker, else 0.",
    multiprocess_mode="livemin",
)
RECONNECTS = Counter(
    "task_gateway_broker_reconnects_total",
    "Connections to the broker made again after one was lost.",
)


# Series by their labels, found once (exchanges and outcomes are few: from the route table).
_OUTCOME_SERIES: dict[tuple[str, Outcome], Any] = {}
_SECONDS_SERIES: dict[str, Any] = {}


def published(exchange: str, outcome: Outcome, seconds: float | None) -> None:
    """Count what the broker answered a publish to `exchange`, and how long it took."""
    series = _OUTCOME_SERIES.get((exchange, outcome))
    if series is None:
        series = _OUTCOME_SERIES[(exchange, outcome)] = OUTCOMES.labels(exchange, outcome)
    series.inc()
    if seconds is not None:
        timer = _SECONDS_SERIES.get(exchange)
        if timer is None:
            timer = _SECONDS_SERIES[exchange] = PUBLISH_SECONDS.labels(exchange)
        timer.observe(seconds)
