"""Child processes and what /proc says about them: start, stop, wait, peak RSS, CPU time.

Every child runs in a session of its own so that stopping it (by its pid, as a process group)
also stops whatever it spawned (uvicorn's, a `--workers N` gateway's or a RabbitMQ node's
processes), and nothing else. Any child still running when the interpreter exits (a run that
died before its own cleanup) is killed then, so none outlives its run.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import resource
import signal
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")

# Every child spawned here, for the interpreter-exit sweep.
_SPAWNED: list[asyncio.subprocess.Process] = []


@atexit.register
def _kill_leftovers() -> None:
    for process in _SPAWNED:
        if process.returncode is None:  # not reaped: the pid is still the child's
            _sigkill(process.pid)


@dataclass
class Child:
    """A child process we started, with its output going to a log file."""

    name: str
    process: asyncio.subprocess.Process
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.returncode is None

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


async def spawn(
    name: str,
    argv: Sequence[str],
    *,
    log_dir: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    stdout_pipe: bool = False,
) -> Child:
    """Start argv in a new session; stderr (and stdout unless piped) go to log_dir/name.log."""
    log_path = log_dir / f"{name}.log"
    log = log_path.open("wb")
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE if stdout_pipe else log,
            stderr=log,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )
    finally:
        log.close()  # the child holds its own descriptor
    _SPAWNED.append(process)
    return Child(name, process, log_path)


async def wait_ready(
    child: Child, ready: Callable[[], Awaitable[bool]], what: str, timeout: float = 30.0
) -> float:
    """Poll `ready()` until it is true; the seconds it took.

    RuntimeError with the log's tail when the child exits first or `timeout` passes; the child
    is then stopped here (also on cancellation), as its caller never got a running one.
    """
    started = time.monotonic()
    try:
        while time.monotonic() - started < timeout:
            if not child.alive():
                raise RuntimeError(f"{what} exited at start-up:\n{child.tail()}")
            if await ready():
                return time.monotonic() - started
            await asyncio.sleep(0.1)
        raise RuntimeError(f"{what} not ready after {timeout:.0f} s:\n{child.tail()}")
    except BaseException:
        await stop(child)
        raise


async def stop(child: Child, grace: float = 5.0) -> int | None:
    """SIGTERM the child's process group, SIGKILL it after `grace` seconds; its exit status."""
    if child.alive():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(child.process.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
            await child.process.wait()
    else:
        # The leader is gone; its workers (same process group) may not be.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signal.SIGKILL)
    return child.process.returncode


async def kill(child: Child, timeout: float = 30.0) -> None:
    """SIGKILL the child and all its descendants at once; return when every one is gone."""
    if not child.alive():
        return  # reaped: its pid may already belong to another process
    tree = _sigkill(child.pid)
    await asyncio.wait_for(child.process.wait(), timeout)
    deadline = time.monotonic() + timeout
    while any(alive(pid) for pid in tree):
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes of {child.name} survived SIGKILL: {tree}")
        await asyncio.sleep(0.05)


def _sigkill(pid: int) -> list[int]:
    """SIGKILL pid, its descendants (even those that left its group) and its group."""
    tree = process_tree(pid)
    for member in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(member, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    return tree


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent to reap it counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def process_tree(pid: int) -> list[int]:
    """pid and all of its descendants (from /proc/<pid>/task/*/children)."""
    seen: list[int] = []
    todo = [pid]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            with contextlib.suppress(OSError):
                todo.extend(int(c) for c in (task / "children").read_text().split())
    return seen


def _status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def peak_rss_mb(pids: Iterable[int]) -> float:
    """Sum of VmHWM (peak resident set) over pids, in MiB.

    A sum of per-process peaks: for one process it is exact, for a `--workers N` tree it is an
    upper bound of the tree's simultaneous peak.
    """
    return sum(_status_kb(pid, "VmHWM") for pid in pids) / 1024


def peak_rss_each_mb(pids: Iterable[int]) -> dict[int, float]:
    """VmHWM of each pid, in MiB (0 for a process that is gone)."""
    return {pid: round(_status_kb(pid, "VmHWM") / 1024, 1) for pid in pids}


def pss_mb(pids: Iterable[int]) -> float:
    """Sum of Pss (resident, shared pages divided among their sharers) over pids, in MiB.

    What a tree of processes takes from the machine: a sum of RSS counts the shared libraries
    (libpython, grpc, OpenSSL) once per process.
    """
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def rss_mb(pids: Iterable[int]) -> float:
    """Sum of VmRSS (resident now) over pids, in MiB."""
    return sum(_status_kb(pid, "VmRSS") for pid in pids) / 1024


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process (all its threads), in clock ticks; 0 once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)


def machine_busy_ticks() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # without guest time, already counted in user
    return total - idle, total


def children_cpu_seconds() -> float:
    """CPU seconds of all reaped children of this process (getrusage RUSAGE_CHILDREN)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def listening_pid(port: int, candidates: Iterable[int]) -> int | None:
    """The pid among candidates holding the socket that listens on TCP `port`."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                cols = line.split()
                if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(cols[9])
    for pid in candidates:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    link = os.readlink(fd)
                    if link.startswith("socket:[") and link[8:-1] in inodes:
                        return pid
    return None


def pids_named(comm: str) -> list[int]:
    """pids whose /proc/<pid>/comm is `comm`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == comm:
                    found.append(int(entry.name))
    return found


@dataclass
class CpuWindow:
    """CPU time of groups of processes between start() and stop(), as % of one core.

    For long-lived processes (the server's tree, complete once it is ready, and the broker).
    A load generator exits at the end of its run, and its ticks go with it: loadgen.py takes
    its CPU time from getrusage(RUSAGE_CHILDREN) instead, or from the driver's own report.
    """

    groups: Mapping[str, list[int]]
    started: float = 0.0
    ticks: dict[str, int] = field(default_factory=dict)
    machine: tuple[int, int] = (0, 0)
    result: dict[str, float] = field(default_factory=dict)

    each: dict[int, float] = field(default_factory=dict)  # % of one core per server pid
    _pid_ticks: dict[int, int] = field(default_factory=dict)

    def _sample(self) -> dict[str, int]:
        return {name: sum(cpu_ticks(p) for p in pids) for name, pids in self.groups.items()}

    def start(self) -> None:
        self.started = time.monotonic()
        self.ticks = self._sample()
        self._pid_ticks = {pid: cpu_ticks(pid) for pid in self.groups.get("server", [])}
        self.machine = machine_busy_ticks()

    def stop(self) -> dict[str, float]:
        wall = max(time.monotonic() - self.started, 1e-6)
        now = self._sample()
        busy, total = machine_busy_ticks()
        ncpu = os.cpu_count() or 1
        self.result = {
            name: round(100 * (now[name] - self.ticks.get(name, 0)) / CLK_TCK / wall, 1)
            for name in self.groups
        }
        # Per server process: with --workers, one busy worker and one idle one (the kernel's
        # SO_REUSEPORT hashing of few connections) look like a half-busy server in the sum.
        self.each = {
            pid: round(100 * (cpu_ticks(pid) - before) / CLK_TCK / wall, 1)
            for pid, before in self._pid_ticks.items()
        }
        # The whole machine, as % of one core too (so 200 = both cores of a 2-core box busy).
        span = max(total - self.machine[1], 1)
        self.result["machine"] = round(100 * ncpu * (busy - self.machine[0]) / span, 1)
        return self.result
