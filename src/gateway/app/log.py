"""structlog set-up: JSON lines in production, a readable console in development.

The gateway's own events go through structlog's native logger straight to stderr: one event
per request is on the hot path, and the standard library's logging machinery would triple
its cost (about 40 µs against 13 µs a line, measured). Libraries that log through the
standard library (grpc, aio-pika) are rendered by the same processors.
"""

from __future__ import annotations

import logging
import sys

import structlog

from gateway.app.workers import worker_pid
from gateway.config import Settings
from gateway.core.middleware import add_call_fields

__all__ = ["configure_logging", "configure_logging_for"]


def configure_logging(*, json: bool, level: str = "info") -> None:
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        add_call_fields,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _add_process,
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    exceptions: structlog.types.Processor = (
        structlog.processors.format_exc_info if json else structlog.processors.StackInfoRenderer()
    )
    structlog.configure(
        processors=[*shared, exceptions, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # The standard library's loggers (grpc, aio-pika, aiohttp) through the same renderer.
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            exceptions,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aio-pika logs every reconnect attempt and lost confirm at WARNING; the gateway logs
    # those itself with more context.
    logging.getLogger("aio_pika").setLevel(max(logging.ERROR, root.level))
    logging.getLogger("aiormq").setLevel(max(logging.ERROR, root.level))


def configure_logging_for(settings: Settings) -> None:
    """JSON when asked, or by default in production; the console otherwise."""
    configure_logging(
        json=settings.log.format == "json"
        or (settings.log.format == "auto" and settings.run_mode == "production"),
        level=settings.log.level,
    )


def _add_process(
    logger: object, method: str, event: structlog.types.EventDict
) -> structlog.types.EventDict:
    """The pid tells worker processes apart (several share the ports)."""
    event["process"] = worker_pid()
    return event
