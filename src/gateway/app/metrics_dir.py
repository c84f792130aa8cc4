"""prometheus-client's multiprocess directory: every worker's metrics, one scrape.

Each worker process writes its metrics to memory-mapped files in this directory, and whichever
worker answers `/metrics` reads them all, so every scrape reports the whole gateway. It must be
set up before anything imports prometheus_client (which reads `PROMETHEUS_MULTIPROC_DIR` once,
at import) and before the workers are forked, so that they all share it. An operator may name
it (`PROMETHEUS_MULTIPROC_DIR`); it is emptied at start, as a restart must not add a dead
process's counts to the new one's. Otherwise a private temporary directory is made, and
removed at exit.

prometheus-client notices a fork by calling os.getpid() on every write to a metric: a system
call per write, a dozen writes per task, which was 6.5 % of a busy worker's time (py-spy,
docs/performance.md). `prepare` gives it a process identifier that reads a number instead,
refreshed in the child of every fork.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

from gateway.app.workers import worker_pid

__all__ = ["ENVIRONMENT_VARIABLE", "prepare"]

ENVIRONMENT_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


def prepare() -> Path:
    """The directory, empty and named in the environment; call before prometheus_client loads."""
    if "prometheus_client" in sys.modules:
        raise RuntimeError("prometheus_client was imported before its multiprocess directory")
    named = os.environ.get(ENVIRONMENT_VARIABLE)
    if named:
        directory = Path(named)
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):
            stale.unlink()
        _identify_without_a_system_call()
        return directory
    directory = Path(tempfile.mkdtemp(prefix="task-gateway-metrics-"))
    os.environ[ENVIRONMENT_VARIABLE] = str(directory)
    creator = os.getpid()

    def remove() -> None:
        if os.getpid() == creator:  # forked workers leave through os._exit anyway
            shutil.rmtree(directory, ignore_errors=True)

    atexit.register(remove)
    _identify_without_a_system_call()
    return directory


def _identify_without_a_system_call() -> None:
    # Every metric is made after this (the server is loaded later), so every value uses it.
    from prometheus_client import values

    values.ValueClass = values.MultiProcessValue(  # type: ignore[no-untyped-call]
        process_identifier=worker_pid
    )
