"""Several gateway processes on one host, sharing the gRPC and HTTP ports (SO_REUSEPORT).

The kernel spreads connections over the processes; each has its own event loop and AMQP
connections. The parent only starts them, passes SIGTERM/SIGINT on, and waits. When one
dies on its own the parent stops the others and exits non-zero: restarting is the job of
the orchestrator (systemd, Kubernetes), not of a home-made supervisor.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

import structlog

from gateway.config import Settings

__all__ = ["default_workers", "run_workers"]

log = structlog.get_logger(logger_name="gateway.workers")


def default_workers() -> int:
    """One process per CPU this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def run_workers(settings: Settings, count: int) -> int:
    """Run a gateway in each of `count` processes; return the exit code for the parent."""
    context = multiprocessing.get_context("spawn")
    processes: list[BaseProcess] = [
        context.Process(target=_serve_worker, args=(settings,), name=f"gateway-worker-{index}")
        for index in range(count)
    ]
    stopping = False

    def forward(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for process in processes:
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for process in processes:
            process.start()
        log.info("workers started", count=count, pids=[p.pid for p in processes])
        remaining: dict[Any, BaseProcess] = {process.sentinel: process for process in processes}
        failed = False
        while remaining:
            for sentinel in wait(list(remaining)):
                process = remaining.pop(sentinel)
                process.join()
                if not stopping:
                    failed = True
                    log.error(
                        "a worker exited on its own; stopping the others",
                        worker=process.name,
                        exit_code=process.exitcode,
                    )
                    forward(signal.SIGTERM, None)
        return 1 if failed else 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _serve_worker(settings: Settings) -> None:
    """A worker's entry point; it imports the server itself, so the parent never does."""
    from gateway.server import serve_worker

    serve_worker(settings)
