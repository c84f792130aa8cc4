"""structlog set-up: JSON lines in production, a readable console in development."""

from __future__ import annotations

import logging
import sys

import structlog

from gateway.config import Settings

__all__ = ["configure_logging", "configure_logging_for"]


def configure_logging(*, json: bool, level: str = "info") -> None:
    """Route structlog and the standard library (grpc, aio-pika) through one renderer."""
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        # The pid tells worker processes apart (several share the ports).
        structlog.processors.CallsiteParameterAdder(
            [structlog.processors.CallsiteParameter.PROCESS]
        ),
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info
            if json
            else structlog.processors.StackInfoRenderer(),
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
    structlog.configure(
        processors=[
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def configure_logging_for(settings: Settings) -> None:
    """JSON when asked, or by default in production; the console otherwise."""
    configure_logging(
        json=settings.log.format == "json"
        or (settings.log.format == "auto" and settings.run_mode == "production"),
        level=settings.log.level,
    )
