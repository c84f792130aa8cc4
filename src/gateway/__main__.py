"""`python -m gateway [--config PATH]`: load settings, set up logging, serve until signalled."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import structlog

from gateway.config import load_settings
from gateway.errors import ConfigError
from gateway.log import configure_logging
from gateway.server import Gateway


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="task-gateway", description=__doc__)
    parser.add_argument(
        "--config",
        type=Path,
        help="TOML settings file (default: config/<run_mode>.toml when it exists)",
    )
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
        configure_logging(
            json=settings.log.format == "json"
            or (settings.log.format == "auto" and settings.run_mode == "production"),
            level=settings.log.level,
        )
        gateway = Gateway(settings)
    except ConfigError as exc:
        print(f"task-gateway: configuration error: {exc}", file=sys.stderr)
        return 2
    if not settings.broker_urls:
        structlog.get_logger("gateway").warning(
            "NO RABBITMQ CONFIGURED: publishing to the in-memory broker. Messages are only "
            "logged here and are lost on exit; set TASK_GATEWAY__BROKER__ADDRESS=amqp://... "
            "to publish to RabbitMQ",
            definitions=settings.broker.definitions,
        )
    try:
        _run(gateway)
    except ConfigError as exc:
        print(f"task-gateway: configuration error: {exc}", file=sys.stderr)
        return 2
    return 0


def _run(gateway: Gateway) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        asyncio.run(gateway.serve())
    else:
        uvloop.run(gateway.serve())


if __name__ == "__main__":
    sys.exit(main())
