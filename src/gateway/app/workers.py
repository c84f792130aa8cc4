"""Several gateway processes on one host, sharing the gRPC and HTTP ports (SO_REUSEPORT).

The kernel spreads connections over the processes; each has its own event loop and AMQP
connections. The first worker is the process that was started: it forks the others before it
loads anything but the settings, then serves like them and also watches them. SIGTERM/SIGINT
reach every worker through it; when one exits on its own it stops the others and the gateway
exits non-zero; if it dies itself, Linux stops the others (PR_SET_PDEATHSIG). Restarting is
the job of the orchestrator (systemd, Kubernetes), not of a home-made supervisor.

No separate supervisor process: it would hold 15 MB for a loop around os.wait, where the
memory target (docs/performance.md: the default workers together at most 150 MB) counts every
process of the gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import mmap
import os
import signal
import sys
import traceback
from collections.abc import Callable

import structlog

from gateway.config import Settings
from gateway.core.quota import Buckets

__all__ = ["Siblings", "WorkerStates", "default_workers", "run_workers", "worker_pid"]

log = structlog.get_logger(logger_name="gateway.workers")

_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class WorkerStates:
    """One byte per worker of this gateway, shared across fork: 1 while its broker is connected.

    Made before the workers are forked (an anonymous shared mapping, which every child
    inherits); a single worker makes its own.
    """

    def __init__(self, count: int) -> None:
        self.count = count
        self._bytes = mmap.mmap(-1, count)  # MAP_SHARED | MAP_ANONYMOUS: one page for all

    def set(self, index: int, connected: bool) -> None:
        self._bytes[index] = int(connected)

    def disconnected(self) -> list[int]:
        """The workers (numbered from 1) whose broker is not connected."""
        return [index + 1 for index in range(self.count) if not self._bytes[index]]


_pid = os.getpid()


def worker_pid() -> int:
    """This process's pid, kept in memory: os.getpid() is a system call, and it is asked for on
    every log line and every metric write."""
    return _pid


def _refresh_pid() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_refresh_pid)


def default_workers() -> int:
    """One process per CPU this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def run_workers(settings: Settings, count: int) -> int:
    """Serve in this process and in `count - 1` forked ones; return the exit code."""
    parent = os.getpid()
    states = WorkerStates(count)  # before the forks: every worker shares it
    # Before the forks too: a client's rate quota holds for the gateway, whatever worker its
    # connections land on.
    buckets = Buckets() if settings.auth.mode == "required" else None
    pids = []
    for index in range(1, count):
        # Signals wait until the child has its own handlers (they are the parent's until then).
        signal.pthread_sigmask(signal.SIG_BLOCK, _FORWARDED)
        pid = os.fork()
        if pid == 0:
            os._exit(_forked_worker(settings, parent, states, buckets, index))
        pids.append(pid)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORWARDED)
    from gateway.app.server import serve_main

    return serve_main(
        settings,
        reuse_port=True,
        siblings=Siblings(pids),
        workers=states,
        worker_index=0,
        buckets=buckets,
    )


class Siblings:
    """The workers the first one forked, as it watches them from its event loop."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = [os.getpid(), *pids]
        self._running = {pid: index for index, pid in enumerate(pids, start=1)}
        self._all_exited = asyncio.Event()
        self._stopping = False
        self.failed = False

    def watch(self, on_failure: Callable[[], None]) -> None:
        """Call `on_failure` when a worker exits without having been told to stop."""
        loop = asyncio.get_running_loop()
        for pid in self._running:
            fd = os.pidfd_open(pid)  # readable once the process has exited
            loop.add_reader(fd, self._exited, pid, fd, on_failure)
        if not self._running:
            self._all_exited.set()

    def signal(self, signum: int, *, stopping: bool = True) -> None:
        """Pass a signal on to every worker still running (a stop signal, unless `stopping`
        is False: SIGHUP)."""
        self._stopping = self._stopping or stopping
        for pid in self._running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    async def wait(self) -> None:
        """Until every forked worker has exited."""
        await self._all_exited.wait()

    def _exited(self, pid: int, fd: int, on_failure: Callable[[], None]) -> None:
        asyncio.get_running_loop().remove_reader(fd)
        os.close(fd)
        _, status = os.waitpid(pid, 0)
        index = self._running.pop(pid)
        _forget_metrics_of(pid)
        if not self._running:
            self._all_exited.set()
        if not self._stopping:
            self.failed = True
            log.error(
                "a worker exited on its own; stopping the others",
                worker=index,
                pid=pid,
                exit_code=os.waitstatus_to_exitcode(status),
            )
            on_failure()


def _forked_worker(
    settings: Settings, parent: int, states: WorkerStates, buckets: Buckets | None, index: int
) -> int:
    """A forked worker, to its exit code; it loads the server itself, after the fork."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the worker's loop handles it
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the first worker died before the line above
        return 1
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORWARDED)
    code = 1
    try:
        from gateway.app.server import serve_main

        code = serve_main(
            settings, reuse_port=True, workers=states, worker_index=index, buckets=buckets
        )
    except KeyboardInterrupt:
        code = 0
    except BaseException:  # os._exit skips the interpreter's own report
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    return code


def _forget_metrics_of(pid: int) -> None:
    """A dead worker's gauges leave the scrape (its counters stay, so they never go back)."""
    from prometheus_client import multiprocess

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
