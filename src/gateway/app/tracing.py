"""OpenTelemetry's SDK, set up in each worker from the standard OTEL_* variables.

Tracing is off unless `OTEL_TRACES_EXPORTER` names an exporter (`otlp`, `console`); it needs
the `otel` extra (`pip install 'task-gateway[otel]'`). The rest is OpenTelemetry's own:
`OTEL_SERVICE_NAME` (default task-gateway), `OTEL_RESOURCE_ATTRIBUTES`,
`OTEL_TRACES_SAMPLER`/`OTEL_TRACES_SAMPLER_ARG`, `OTEL_EXPORTER_OTLP_ENDPOINT`,
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `OTEL_EXPORTER_OTLP_HEADERS`, ... The SDK starts after
the fork, in each worker (its export thread would not survive a fork).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import structlog

__all__ = ["start_tracing"]

log = structlog.get_logger(logger_name="gateway.tracing")

_EXPORTERS = ("otlp", "console")


def start_tracing(version: str) -> tuple[Any, Callable[[], None]] | None:
    """(a tracer, a function that flushes and stops the SDK), or None when tracing is off."""
    exporter_name = os.environ.get("OTEL_TRACES_EXPORTER", "none").strip().lower()
    if exporter_name in ("", "none") or os.environ.get("OTEL_SDK_DISABLED", "") == "true":
        return None
    if exporter_name not in _EXPORTERS:
        log.warning(
            "tracing stays off: OTEL_TRACES_EXPORTER names no exporter the gateway knows",
            exporter=exporter_name,
            known=list(_EXPORTERS),
        )
        return None
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            ConsoleSpanExporter,
            SpanExporter,
        )
    except ImportError:
        log.warning(
            "tracing stays off: OTEL_TRACES_EXPORTER is set but OpenTelemetry is not installed "
            "(pip install 'task-gateway[otel]')"
        )
        return None
    exporter: SpanExporter
    if exporter_name == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()  # OTEL_EXPORTER_OTLP_* configure it
    else:
        exporter = ConsoleSpanExporter()
    # Resource.create reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; TracerProvider
    # reads OTEL_TRACES_SAMPLER(_ARG).
    attributes: dict[str, Any] = {SERVICE_VERSION: version}
    if "OTEL_SERVICE_NAME" not in os.environ:
        attributes[SERVICE_NAME] = "task-gateway"
    provider = TracerProvider(resource=Resource.create(attributes))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    log.info("tracing on", exporter=exporter_name)
    return provider.get_tracer("gateway", version), provider.shutdown
