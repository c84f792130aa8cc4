"""Run a load generator (h2load, wrk or bench/pydriver.py) and read what it measured.

Each run gives a LoadResult: successful requests per second over the measured window, p50/p99,
the errors it saw, CPU use over the window (server, broker, the load generator itself, the whole
machine), and the range the number of published messages must fall in (`expect`), which the
phase checks against the queues.

Why a range: h2load and wrk stop at the end of -D/-d with requests still in flight; the gateway
may publish some of them. So for them the queue must hold between the successes and the
successes plus what was in flight at the stop. h2load also cannot see gRPC errors (they come in
trailers, with HTTP 200), so a gRPC error shows up only as a missing message: the queue count is
the check. The Python driver waits for every request and reads every status: its range is exact.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.pydriver import percentile
from tests.support import procs

ROOT = Path(__file__).resolve().parents[1]  # the driver runs as `python -m bench.pydriver` here
EXTRA_WAIT = 30.0  # seconds a load generator may run past its duration before it is killed


@dataclass
class LoadResult:
    """What one load-generator run measured."""

    tool: str
    command: str
    ok: int  # successful requests inside the measured window
    seconds: float
    p50_ms: float | None
    p99_ms: float | None
    expect: tuple[int, int]  # successful requests since the last purge: (at least, at most)
    errors: dict[str, int] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)  # % of one core; "seconds": the window
    extra: dict[str, Any] = field(default_factory=dict)
    # The CPU window spans the whole run (h2load, wrk), so the messages counted in the queue
    # after it are its tasks; the Python drivers' runs also hold a counted warm-up, so their
    # tasks are those confirmed inside the window (`ok`).
    cpu_covers_run: bool = False

    @property
    def rate(self) -> float:
        """Successful requests per second."""
        return self.ok / self.seconds if self.seconds else 0.0


@dataclass
class Target:
    """Where and what to send; a phase builds one per run."""

    kind: str  # "grpc" | "http" | "amqp" | "sdk" (bench/sdk_driver.py)
    address: str  # grpc, sdk: host:port; http: full URL; amqp: AMQP URL
    body_file: Path | None = None  # grpc: length-prefixed frames; http: JSON body
    method: str = ""  # grpc: /package.Service/Method
    stream: bool = False  # grpc: all frames on one stream per call
    amqp_request: dict[str, Any] | None = None
    amqp_message: str = "gateway"  # amqp: "gateway" or "minimal" (bench/raw_aiopika.py)
    amqp_library: str = "aiopika"  # amqp: "aiopika" or "aiormq" (bench/raw_aiormq.py)
    headers: tuple[tuple[str, str], ...] = ()  # sent with every request (gRPC: metadata)
    token: str | None = None  # sdk: the client's bearer token


@dataclass
class Tools:
    """The load-generator settings of the run (printed with the table)."""

    h2load: str | None
    wrk: str | None
    h2load_clients: int
    h2load_streams: int
    h2load_threads: int
    wrk_threads: int
    wrk_connections: int
    log_dir: Path
    python: str = sys.executable

    def describe(self) -> dict[str, str]:
        c, m, t = self.h2load_clients, self.h2load_streams, self.h2load_threads
        grpc = (
            f"h2load -t{t} -c{c} -m{m} -D <s> -d <frame> -H 'content-type: application/grpc' "
            f"-H 'te: trailers'"
            if self.h2load
            else f"bench/pydriver.py closed loop, {c} channels x {m} in flight (no h2load)"
        )
        rest = (
            f"wrk -t{self.wrk_threads} -c{self.wrk_connections} -d <s> -s <legacy body .lua>"
            if self.wrk
            else f"bench/pydriver.py closed loop, {self.wrk_connections} connections (no wrk)"
        )
        return {"grpc": grpc, "rest": rest}


class CpuSampler:
    """CPU over a run: server tree and broker from /proc, the load generator separately."""

    def __init__(self, server_pids: list[int], broker_pid: int | None) -> None:
        groups = {
            "server": server_pids,
            "broker": [broker_pid] if broker_pid else [],
            "bench": [os.getpid()],  # this orchestrator: it only waits, but say so
        }
        self.window = procs.CpuWindow(groups)
        self.children_cpu = 0.0
        self.started = 0.0

    def start(self) -> None:
        self.window.start()
        self.children_cpu = procs.children_cpu_seconds()
        self.started = time.monotonic()

    def stop(self, loadgen_percent: float | None = None) -> dict[str, float]:
        result = self.window.stop()
        if len(self.window.each) > 1:  # several server processes: the busiest one
            result["server_max"] = max(self.window.each.values())
        if loadgen_percent is None:  # the load generator was our child and has been reaped
            wall = max(time.monotonic() - self.started, 1e-6)
            loadgen_percent = 100 * (procs.children_cpu_seconds() - self.children_cpu) / wall
        result["loadgen"] = round(loadgen_percent, 1)
        result["seconds"] = round(time.monotonic() - self.window.started, 3)
        return with_other(result)


def with_other(cpu: dict[str, float]) -> dict[str, float]:
    """Add `other`: CPU the machine spent outside server, broker, load generator and bench.

    On a shared machine this is someone else's work competing for the same cores; a large
    value means the row's numbers are not this code's alone.
    """
    known = sum(cpu.get(k, 0.0) for k in ("server", "broker", "loadgen", "bench"))
    return cpu | {"other": round(max(0.0, cpu.get("machine", 0.0) - known), 1)}


async def _run_to_end(child: procs.Child, timeout: float) -> None:
    try:
        await asyncio.wait_for(child.process.wait(), timeout)
    finally:
        await procs.stop(child)


def _latency_percentiles(
    log_file: Path, skip_seconds: float = 0.0
) -> tuple[float | None, float | None]:
    """p50, p99 (ms) of the 200 rows of an h2load --log-file (start and duration in us), but
    for those that started in its first `skip_seconds`."""
    rows = []
    for line in log_file.read_text().splitlines():
        cols = line.split("\t")
        if len(cols) >= 3 and cols[1] == "200":
            rows.append((int(cols[0]), int(cols[2]) / 1e6))
    if rows and skip_seconds:
        after = min(start for start, _ in rows) + skip_seconds * 1e6
        rows = [row for row in rows if row[0] >= after]
    seconds = [duration for _, duration in rows]
    return percentile(seconds, 50), percentile(seconds, 99)


async def h2load(
    tools: Tools,
    target: Target,
    seconds: int,
    cpu: CpuSampler | None,
    name: str,
    clients: int | None = None,
    streams: int | None = None,
    rate: float | None = None,
    skip_seconds: float = 0.0,
) -> LoadResult:
    """h2load -D seconds against a gRPC method, the body file as the request.

    Closed loop (each stream sends again when answered), or with `rate` open loop: requests at
    that rate in all (`--rps`, spread over the clients), `streams` bounding how many may wait
    for their answer on a connection. The latency percentiles leave out the requests started in
    the first `skip_seconds`."""
    assert tools.h2load
    assert target.body_file
    c, m = clients or tools.h2load_clients, streams or tools.h2load_streams
    log_file = tools.log_dir / f"{name}.h2load.tsv"
    log_file.unlink(missing_ok=True)  # h2load appends
    host, port = target.address.rsplit(":", 1)
    argv = [
        tools.h2load,
        "-D",
        str(seconds),
        "-t",
        str(tools.h2load_threads),
        "-c",
        str(c),
        "-m",
        str(m),
        "-d",
        str(target.body_file),
        "-H",
        "content-type: application/grpc",
        "-H",
        "te: trailers",
        *(arg for name, value in target.headers for arg in ("-H", f"{name}: {value}")),
        "--log-file",
        str(log_file),
        f"http://{host}:{port}{target.method}",
    ]
    if rate is not None:
        argv[1:1] = ["--rps", f"{rate / c:.3f}"]
    if cpu:
        cpu.start()
    child = await procs.spawn(name, argv, log_dir=tools.log_dir)
    await _run_to_end(child, seconds + EXTRA_WAIT)
    cpu_result = cpu.stop() if cpu else {}
    out = child.log_path.read_text(errors="replace")
    finished = re.search(r"finished in ([\d.]+)(m?s)", out)
    counts = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
        r"(\d+) errored, (\d+) timeout",
        out,
    )
    if not finished or not counts:
        raise RuntimeError(f"h2load printed no result (see {child.log_path}):\n{out[-2000:]}")
    elapsed = float(finished[1]) / (1000 if finished[2] == "ms" else 1)
    _total, started, _done, succeeded, failed, errored, timeout = map(int, counts.groups())
    status = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    errors = {"failed": failed, "errored": errored, "timeout": timeout}
    if status:
        errors |= {"3xx": int(status[2]), "4xx": int(status[3]), "5xx": int(status[4])}
    p50, p99 = _latency_percentiles(log_file, skip_seconds)
    return LoadResult(
        tool="h2load",
        command=shlex.join(argv),
        ok=succeeded,
        seconds=elapsed,
        p50_ms=p50,
        p99_ms=p99,
        # In-flight streams cut at the stop may or may not have been published.
        expect=(succeeded, started),
        errors={k: v for k, v in errors.items() if v},
        cpu=cpu_result,
        cpu_covers_run=True,
    )


async def wrk(
    tools: Tools, target: Target, seconds: int, cpu: CpuSampler | None, name: str
) -> LoadResult:
    """wrk -d seconds: POST the legacy body; the script's done() reports counts and p50/p99."""
    assert tools.wrk
    assert target.body_file
    from bench.payloads import wrk_script

    script = tools.log_dir / f"{name}.lua"
    script.write_text(wrk_script(target.body_file.read_bytes(), target.headers))
    c = tools.wrk_connections
    argv = [
        tools.wrk,
        "-t",
        str(tools.wrk_threads),
        "-c",
        str(c),
        "-d",
        f"{seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        target.address,
    ]
    if cpu:
        cpu.start()
    child = await procs.spawn(name, argv, log_dir=tools.log_dir)
    await _run_to_end(child, seconds + EXTRA_WAIT)
    cpu_result = cpu.stop() if cpu else {}
    out = child.log_path.read_text(errors="replace")
    line = next((ln for ln in out.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result (see {child.log_path}):\n{out[-2000:]}")
    r = json.loads(line.removeprefix("BENCH_JSON "))
    ok = r["requests"] - r["status_errors"]
    errors = {
        k: r[k]
        for k in ("status_errors", "connect_errors", "read_errors", "write_errors", "timeouts")
        if r[k]
    }
    # Each connection may have had one request in flight at the stop; a timed-out or broken
    # request may have been published too.
    unknown = c + r["timeouts"] + r["read_errors"] + r["write_errors"]
    return LoadResult(
        tool="wrk",
        command=shlex.join(argv),
        ok=ok,
        seconds=r["duration_us"] / 1e6,
        p50_ms=r["p50_us"] / 1000,
        p99_ms=r["p99_us"] / 1000,
        expect=(ok, ok + unknown),
        errors=errors,
        cpu=cpu_result,
        cpu_covers_run=True,
    )


async def pydriver(
    tools: Tools,
    target: Target,
    *,
    seconds: float,
    warmup: float,
    cpu: CpuSampler | None,
    name: str,
    concurrency: int | None = None,
    rate: float | None = None,
    connections: int = 8,
) -> LoadResult:
    """bench/pydriver.py in a process of its own: closed loop (concurrency) or open (rate)."""
    argv = [
        "--target",
        target.kind,
        "--address",
        target.address,
        "--connections",
        str(connections),
        "--warmup",
        str(warmup),
        "--duration",
        str(seconds),
    ]
    if target.body_file:
        argv += ["--body", str(target.body_file)]
    if target.method:
        argv += ["--method", target.method]
    if target.stream:
        argv += ["--stream"]
    argv += [arg for name_, value in target.headers for arg in ("--header", f"{name_}: {value}")]
    if target.amqp_request is not None:
        argv += ["--request", json.dumps(target.amqp_request), "--message", target.amqp_message]
        argv += ["--library", target.amqp_library]
    argv += ["--rate", f"{rate:.1f}"] if rate else ["--concurrency", str(concurrency)]
    return await python_driver(tools, "bench.pydriver", argv, warmup + seconds, cpu, name)


async def sdk(
    tools: Tools,
    target: Target,
    *,
    seconds: float,
    warmup: float,
    cpu: CpuSampler | None,
    name: str,
    client: str,
    processes: int,
    connections: int,
) -> LoadResult:
    """bench/sdk_driver.py: `processes` SDK batching publishers, each as fast as it goes on a
    client of `connections` connections."""
    argv = ["--address", target.address, "--client", client, "--processes", str(processes)]
    argv += ["--connections", str(connections)]
    argv += ["--warmup", str(warmup), "--duration", str(seconds)]
    if target.token:
        argv += ["--token", target.token]
    return await python_driver(tools, "bench.sdk_driver", argv, warmup + seconds, cpu, name)


async def python_driver(
    tools: Tools,
    module: str,
    args: list[str],
    seconds: float,
    cpu: CpuSampler | None,
    name: str,
) -> LoadResult:
    """A Python driver (`python -m module args`) in a process of its own; what it measured.

    It prints BENCH_MEASURE_START/END at the edges of its measured window (the CPU sampler
    runs between them) and one `BENCH_JSON {...}` line at the end.
    """
    argv = [tools.python, "-m", module, *args]
    child = await procs.spawn(name, argv, log_dir=tools.log_dir, cwd=ROOT, stdout_pipe=True)
    result: dict[str, Any] | None = None
    cpu_result: dict[str, float] = {}
    try:
        assert child.process.stdout is not None
        async with asyncio.timeout(seconds + EXTRA_WAIT):
            async for raw in child.process.stdout:
                line = raw.decode().strip()
                if line == "BENCH_MEASURE_START" and cpu:
                    cpu.start()
                elif line == "BENCH_MEASURE_END" and cpu:
                    cpu_result = cpu.stop(loadgen_percent=0.0)
                elif line.startswith("BENCH_JSON "):
                    result = json.loads(line.removeprefix("BENCH_JSON "))
            await child.process.wait()
    finally:
        await procs.stop(child)
    if result is None:
        raise RuntimeError(f"{module} failed (see {child.log_path}):\n{child.tail()}")
    # The driver measured its own CPU over the window (getrusage in the driver).
    cpu_out = with_other(cpu_result | {"loadgen": result["cpu_percent"]}) if cpu_result else {}
    errors = result["errors"]
    return LoadResult(
        tool=module.removeprefix("bench."),
        command=shlex.join(["python", *argv[1:]]),
        ok=result["window_ok"],
        seconds=result["seconds"],
        p50_ms=result["p50_ms"],
        p99_ms=result["p99_ms"],
        # Every request was waited for; one that failed may still have been published
        # (e.g. DEADLINE_EXCEEDED: outcome unknown).
        expect=(result["ok_total"], result["ok_total"] + sum(errors.values())),
        errors=errors,
        cpu=cpu_out,
        extra={
            k: result[k]
            for k in (
                "p999_ms",
                "max_ms",
                "service_p50_ms",
                "service_p99_ms",
                "peak_rss_mb",
                "ok_total",
                "cpu_percent",
            )
        },
    )
