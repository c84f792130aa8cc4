"""`python -m gateway [--config PATH] [--workers N]`: load settings, serve until signalled."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from gateway.app import metrics_dir
from gateway.app.workers import default_workers, run_workers
from gateway.config import Settings, load_settings
from gateway.errors import ConfigError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="task-gateway", description=__doc__)
    parser.add_argument(
        "--config",
        type=Path,
        help="TOML settings file (default: config/<run_mode>.toml when it exists)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        help="gateway processes sharing the ports (default: the `workers` setting; 0: one per CPU)",
    )
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
        if args.workers is not None:
            if args.workers < 0:
                raise ConfigError(f"--workers: must be 0 or more, got {args.workers}")
            settings = dataclasses.replace(settings, workers=args.workers)
        workers = _worker_count(settings)
    except ConfigError as exc:
        print(f"task-gateway: configuration error: {exc}", file=sys.stderr)
        return 2
    metrics_dir.prepare()  # before the server (which loads prometheus_client) and the fork
    if workers == 1:
        # Imported here, not at the top: with several workers, run_workers forks them before
        # the server (grpc, aiohttp, aio-pika) is loaded.
        from gateway.app.server import serve_main

        return serve_main(settings)
    return run_workers(settings, workers)


def _worker_count(settings: Settings) -> int:
    if not settings.broker_urls:
        return 1  # several in-memory brokers would each hold a part of the messages
    workers = settings.workers or default_workers()
    if workers > 1:
        for key, address in settings.listen_addresses:
            if int(address.rpartition(":")[2]) == 0:  # load_settings checked it is host:port
                raise ConfigError(f"{key}: workers share one port; {address} asks each for its own")
    return workers
