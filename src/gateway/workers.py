"""Several gateway processes on one host, sharing the gRPC and HTTP ports (SO_REUSEPORT).

The kernel spreads connections over the processes; each has its own event loop and AMQP
connections. The parent forks them, then only passes SIGTERM/SIGINT on and waits. When one
dies on its own the parent stops the others and exits non-zero: restarting is the job of
the orchestrator (systemd, Kubernetes), not of a home-made supervisor.

The parent loads the settings and nothing else: no event loop, no grpc, not even the logging
library (which imports asyncio and, with it, OpenSSL). It stays at about 10 MB, where it was
29 MB, plus a 12 MB resource tracker, when it was a multiprocessing parent; its two events
are written by `_announce` in the shape of the workers' log lines.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
import traceback
from types import FrameType
from typing import Any

from gateway.config import Settings

__all__ = ["default_workers", "run_workers"]

_FORWARDED = (signal.SIGTERM, signal.SIGINT)


def default_workers() -> int:
    """One process per CPU this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def run_workers(settings: Settings, count: int) -> int:
    """Run a gateway in each of `count` forked processes; return the parent's exit code."""
    workers: dict[int, int] = {}  # pid -> worker index
    stopping = False

    def forward(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in _FORWARDED}
    try:
        for index in range(count):
            # Signals wait until the child has dropped the parent's handler.
            signal.pthread_sigmask(signal.SIG_BLOCK, _FORWARDED)
            pid = os.fork()
            if pid == 0:
                os._exit(_worker(settings))
            workers[pid] = index
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORWARDED)
        _announce(settings, "info", "workers started", count=count, pids=list(workers))
        failed = False
        while workers:
            pid, status = os.wait()
            index = workers.pop(pid, -1)
            if index < 0 or stopping:
                continue
            failed = True
            _announce(
                settings,
                "error",
                "a worker exited on its own; stopping the others",
                worker=index,
                exit_code=os.waitstatus_to_exitcode(status),
            )
            forward(signal.SIGTERM, None)
        return 1 if failed else 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _worker(settings: Settings) -> int:
    """A forked worker, to its exit code; it imports the server itself, the parent never does."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORWARDED)
    code = 1
    try:
        from gateway.server import serve_main

        code = serve_main(settings, reuse_port=True)
    except KeyboardInterrupt:
        code = 0
    except BaseException:  # os._exit below skips the interpreter's own report
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    return code


def _announce(settings: Settings, level: str, event: str, **fields: Any) -> None:
    """One of the parent's events, as the workers' log lines look (gateway.log)."""
    json_lines = settings.log.format == "json" or (
        settings.log.format == "auto" and settings.run_mode == "production"
    )
    if level == "info" and settings.log.level not in ("debug", "info"):
        return
    if json_lines:
        line = json.dumps(
            {
                "event": event,
                "logger_name": "gateway.workers",
                **fields,
                "level": level,
                "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + "Z",
                "process": os.getpid(),
            }
        )
    else:
        details = " ".join(f"{key}={value}" for key, value in fields.items())
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} [{level:<9}] {event:<40} {details}"
    print(line, file=sys.stderr, flush=True)
