"""`make bench`: one command, one run, one table (bench/README.md).

    .venv/bin/python -m bench.run [--phases default,+grpc.batch] [--duration 10] ...

Creates a private vhost on the local RabbitMQ with the topology of definitions.json, runs each
phase (the raw aio-pika and aiormq publishers, the gateway's unary gRPC, batch, stream and REST,
the SDK's batching publisher, the naive baselines and the Go and Node peers when
../shared/baselines has them, the floors), checks every count, prints the table, the Python
floors and the verdicts on docs/performance.md's targets, writes result.json, and deletes the
vhost, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # `python bench/run.py`: make `bench` and the gateway importable
    sys.path[:0] = [str(ROOT), str(ROOT / "src"), str(ROOT / "src" / "generated")]

from yarl import URL  # noqa: E402

from bench import payloads, report, setup_peers  # noqa: E402
from bench.loadgen import Tools  # noqa: E402
from bench.phases import Context, Phase, PhaseResult, Settings, phases  # noqa: E402
from bench.servers import Env  # noqa: E402
from bench.setup_baselines import default_baselines, git  # noqa: E402
from tests.support import procs, rabbitmq  # noqa: E402
from tests.support.rabbitmq import topology_at  # noqa: E402

PHASE_BUDGET = 90.0  # seconds a phase may take beyond its load runs (start, counts, purges)
OTHER_CPU_WARNING = 25.0  # % of one core used by other processes that makes a row suspect


async def machine_busy(seconds: float = 2.0) -> float:
    """% of one core the machine is busy with while the bench does nothing."""
    window = procs.CpuWindow({})
    window.start()
    await asyncio.sleep(seconds)
    return window.stop()["machine"]


def gateway_revision() -> str:
    """The commit the gateway runs from, `+dirty` when src/ or proto/ has local changes."""
    try:
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--", "src", "proto")
    except (subprocess.SubprocessError, OSError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--phases",
        default="default",
        help="comma list of phase keys; 'default', 'all', '+key' adds, '-key' drops "
        "(e.g. default,-peer.go.rest,+rest.auth); --list shows them",
    )
    p.add_argument("--list", action="store_true", help="list the phases and exit")
    p.add_argument(
        "--auth",
        action="store_true",
        help="also the auth-on rows: grpc.typed.auth and rest.auth (the gateway with "
        "auth.mode=required, one client and its token), each after its auth-off row",
    )
    p.add_argument("--duration", type=int, default=10, help="seconds of each peak run")
    p.add_argument("--warmup", type=int, default=2, help="seconds of warm-up before it")
    p.add_argument("--half-duration", type=int, default=8, help="seconds at half the peak rate")
    p.add_argument(
        "--gateway-args",
        default="",
        help="extra arguments of `python -m gateway`, one string: --gateway-args='--workers 2'",
    )
    p.add_argument("--workers", type=int, help="shorthand for --gateway-args='--workers N'")
    p.add_argument(
        "--loadgen",
        choices=["auto", "python"],
        default="auto",
        help="auto: h2load and wrk when installed; python: bench/pydriver.py only",
    )
    p.add_argument("--h2load-clients", type=int, default=8, help="h2load -c (gRPC connections)")
    p.add_argument("--h2load-streams", type=int, default=16, help="h2load -m (streams each)")
    p.add_argument("--h2load-threads", type=int, default=1, help="h2load -t")
    p.add_argument("--wrk-connections", type=int, default=64, help="wrk -c")
    p.add_argument("--wrk-threads", type=int, default=1, help="wrk -t")
    p.add_argument("--raw-in-flight", type=int, default=256)
    p.add_argument(
        "--sdk-client",
        choices=["async", "sync"],
        default="async",
        help="sdk.publisher: the asyncio or the sync client's publisher",
    )
    p.add_argument(
        "--sdk-processes",
        type=int,
        default=2,
        help="sdk.publisher: publisher processes, one client each",
    )
    p.add_argument(
        "--sdk-connections",
        type=int,
        default=2,
        help="sdk.publisher: connections of each process's client (its calls take them in turn)",
    )
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--stream-size", type=int, default=100)
    p.add_argument(
        "--amqp-url",
        default="amqp://guest:guest@127.0.0.1:5672/",
        help="the local RabbitMQ; the bench makes a vhost of its own on it",
    )
    p.add_argument("--definitions", type=Path, default=ROOT / "deploy/rabbitmq/definitions.json")
    p.add_argument(
        "--baselines",
        type=Path,
        default=None,
        help="default: $(git rev-parse --show-toplevel)/../shared/baselines",
    )
    p.add_argument(
        "--bench-venv",
        type=Path,
        default=ROOT / "build/bench-venv",
        help="venv with fastapi/uvicorn for the baselines (bench/setup_baselines.py)",
    )
    p.add_argument(
        "--gateway-venv",
        type=Path,
        default=ROOT / "build/gateway-venv",
        help="venv with the gateway installed without the dev extra (bench/setup_gateway.py)",
    )
    p.add_argument(
        "--peers-build",
        type=Path,
        default=ROOT / "build/peers",
        help="where bench/setup_peers.py builds the peers of ../shared/baselines/peers",
    )
    p.add_argument("--out", type=Path, default=ROOT / "build/bench")
    return p.parse_args(argv)


def select(all_phases: list[Phase], spec: str, auth: bool = False) -> list[Phase]:
    """Phases named by --phases (and the auth-on ones with --auth), in their declared order."""
    keys = {p.key for p in all_phases}
    chosen: set[str] = {p.key for p in all_phases if p.auth} if auth else set()
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        if item == "default":
            chosen |= {p.key for p in all_phases if p.default}
        elif item == "all":
            chosen |= keys
        elif item.startswith("-"):
            chosen.discard(item[1:])
        else:
            name = item.removeprefix("+")
            if name not in keys:
                raise SystemExit(f"unknown phase {name!r}; known: {', '.join(sorted(keys))}")
            chosen.add(name)
    return [p for p in all_phases if p.key in chosen]


@dataclass
class Baselines:
    """The naive baselines of ../shared/baselines, or why they do not run."""

    path: Path | None = None
    python: str | None = None  # build/bench-venv
    bench_pb2: ModuleType | None = None  # their messages, generated from their proto
    skip: str | None = None


def baselines(args: argparse.Namespace, chosen: list[Phase], work: Path) -> Baselines:
    """Where the baselines are, the venv that runs them and their messages; or why not."""
    path = (args.baselines or default_baselines()).resolve()
    if not (path / "grpc_baseline.py").exists():
        return Baselines(skip=f"no baselines at {path}")
    python = args.bench_venv / "bin" / "python"
    if not (args.bench_venv / ".installed").exists() or not python.exists():
        return Baselines(
            path,
            skip=f"no baseline venv at {args.bench_venv} "
            "(make bench creates it: bench/setup_baselines.py)",
        )
    found = Baselines(path, str(python))
    if any(p.baseline for p in chosen):
        try:
            found.bench_pb2 = payloads.baseline_stubs(path / "proto", work / "baseline-gen")
        except (subprocess.SubprocessError, OSError, ImportError) as exc:
            found.skip = f"cannot generate bench_pb2 from {path}/proto: {exc}"
    return found


def bench_settings(args: argparse.Namespace) -> Settings:
    gateway_args = tuple(shlex.split(args.gateway_args))
    if args.workers:
        gateway_args += ("--workers", str(args.workers))
    return Settings(
        duration=args.duration,
        warmup=args.warmup,
        half_duration=args.half_duration,
        raw_in_flight=args.raw_in_flight,
        batch_size=args.batch_size,
        stream_size=args.stream_size,
        gateway_args=gateway_args,
        sdk_client=args.sdk_client,
        sdk_processes=args.sdk_processes,
        sdk_connections=args.sdk_connections,
    )


def load_tools(args: argparse.Namespace, logs: Path) -> Tools:
    use_tools = args.loadgen == "auto"
    return Tools(
        h2load=shutil.which("h2load") if use_tools else None,
        wrk=shutil.which("wrk") if use_tools else None,
        h2load_clients=args.h2load_clients,
        h2load_streams=args.h2load_streams,
        h2load_threads=args.h2load_threads,
        wrk_threads=args.wrk_threads,
        wrk_connections=args.wrk_connections,
        log_dir=logs,
    )


def load_settings_text(
    settings: Settings, tools: Tools, gateway_python: str, revision: str
) -> list[str]:
    d = tools.describe()
    gateway_args = settings.gateway_args
    return [
        f"gRPC peak:   {d['grpc']}",
        f"REST peak:   {d['rest']}",
        f"raw peak:    bench/pydriver.py --target amqp (bench/raw_aiopika.py, "
        f"bench/raw_aiormq.py): {settings.raw_in_flight} publishes in flight, each awaits its "
        "confirm",
        f"SDK peak:    bench/sdk_driver.py --client {settings.sdk_client} --processes "
        f"{settings.sdk_processes}: client.publisher(max_batch=100, max_latency=0.01, "
        f"max_outstanding=1000) kept full, one client of {settings.sdk_connections} connections "
        "per process",
        "peers:       ../shared/baselines/peers built by bench/setup_peers.py, their defaults "
        "(Node: one process per CPU; Go: one process), the gRPC and REST rows' settings",
        "auth rows:   the gateway with AUTH__MODE=required and one client (a token, "
        "rate_per_second 1e6): h2load -H / the wrk script / the drivers send "
        "'authorization: Bearer <token>'",
        "half peak:   open loop at half the row's peak rate, uniform schedule, the first "
        "second left out: unary gRPC rows h2load --rps on "
        f"{tools.h2load_clients} connections, 100 streams each, so that each request goes "
        "when it is due; batch, stream and REST rows bench/pydriver.py (its CPU is per call; "
        "wrk has no open loop), on the row's gRPC connections or "
        f"{tools.wrk_connections} REST connections, latency from the due time; without "
        "h2load, bench/pydriver.py for all",
        f"durations:   warm-up {settings.warmup} s (h2load/wrk: a run of its own, then purge; "
        f"pydriver: same process, counted), peak {settings.duration} s, half peak 1 s + "
        f"{settings.half_duration} s; a fresh server process per row",
        f"gateway:     {shlex.join([gateway_python, '-m', 'gateway', *gateway_args])} "
        f"(pip install . without the dev extra; LOG__FORMAT=json, LOG__LEVEL=warning), "
        f"code at {revision}",
    ]


@dataclass
class Setup:
    """One run's choices and surroundings, fixed before the first phase starts."""

    args: argparse.Namespace
    settings: Settings
    chosen: list[Phase]
    out: Path
    work: Path
    logs: Path
    tools: Tools
    baselines: Baselines
    machine: dict[str, str]
    peers: dict[str, setup_peers.Peer]
    idle_busy: float = 0.0
    auth_token: str = ""

    def env(self, amqp_url: str) -> Env:
        return Env(
            root=ROOT,
            python=sys.executable,
            gateway_python=str(self.args.gateway_venv / "bin" / "python"),
            amqp_url=amqp_url,
            log_dir=self.logs,
            bench_python=self.baselines.python,
            baselines=self.baselines.path,
            baseline_gen=self.work / "baseline-gen",
            work=self.work,
            auth_token=self.auth_token,
            peers=self.peers,
        )

    def timeout(self) -> float:
        """A hard cap on the phases, from the settings: no run hangs forever."""
        s = self.settings
        load = s.warmup + s.duration + 2 * (1 + s.half_duration)
        return len(self.chosen) * (load + PHASE_BUDGET)


async def build_peers(
    args: argparse.Namespace, chosen: list[Phase], found: Baselines, logs: Path
) -> dict[str, setup_peers.Peer]:
    """The peers the chosen phases need, built (bench/setup_peers.py), or why not."""
    wanted = tuple(sorted({p.peer for p in chosen if p.peer}))
    if not wanted:
        return {}
    path = found.path or (args.baselines or default_baselines()).resolve()
    print(f"peers: building {', '.join(wanted)} (bench/setup_peers.py, logs in {logs})", flush=True)
    return await asyncio.to_thread(setup_peers.setup, path, args.peers_build, logs, wanted)


async def prepare(args: argparse.Namespace, settings: Settings, chosen: list[Phase]) -> Setup:
    """Directories, tools, baselines and the machine; printed as the run's header."""
    out: Path = args.out
    work, logs = out / "work", out / "logs"
    shutil.rmtree(logs, ignore_errors=True)
    for d in (work, logs):
        d.mkdir(parents=True, exist_ok=True)
    rabbitmq_version = await asyncio.to_thread(rabbitmq.version)
    machine = report.machine(rabbitmq_version) | {"gateway_revision": gateway_revision()}
    found = baselines(args, chosen, work)
    peers = await build_peers(args, chosen, found, logs)
    setup = Setup(
        args, settings, chosen, out, work, logs, load_tools(args, logs), found, machine, peers,
        auth_token=secrets.token_urlsafe(24),
    )  # fmt: skip
    print(f"bench: {', '.join(p.key for p in chosen)}")
    print(
        f"machine: {machine['nproc']} x {machine['cpu']}, RabbitMQ {rabbitmq_version}, "
        f"Python {machine['python']}"
    )
    if not setup.tools.h2load or not setup.tools.wrk:
        print(
            "load generators: h2load or wrk missing, using bench/pydriver.py for those "
            "(apt-get install nghttp2-client wrk; bench/install-tools.sh)"
        )
    if setup.baselines.skip:
        print(f"baselines skipped: {setup.baselines.skip}")
    for peer in peers.values():
        if peer.skip:
            print(f"peer {peer.name} skipped: {peer.skip}")
        else:
            print(f"peer {peer.name}: {shlex.join(peer.argv)}")
    setup.idle_busy = await machine_busy()
    print(f"machine busy before the run: {setup.idle_busy:.0f}% of one core")
    return setup


async def run_phases(setup: Setup) -> dict[str, PhaseResult]:
    """Each chosen phase, in a vhost of the run's own that goes even on Ctrl-C."""
    vhost = rabbitmq.Vhost(setup.args.amqp_url, prefix="task-gateway-bench")
    try:
        await asyncio.to_thread(vhost.create)
        print(f"vhost: {vhost.name}")
        async with topology_at(vhost.url, setup.args.definitions) as topology:
            await topology.declare()
            ctx = Context(
                setup.settings,
                topology,
                setup.env(vhost.url),
                setup.tools,
                rabbitmq.broker_pid(URL(setup.args.amqp_url).port or 5672),
                setup.work,
                bench_pb2=setup.baselines.bench_pb2,
                skip_baselines=setup.baselines.skip,
            )
            return {phase.key: await run_phase(phase, ctx) for phase in setup.chosen}
    finally:
        await asyncio.to_thread(vhost.delete)


async def run_phase(phase: Phase, ctx: Context) -> PhaseResult:
    """One phase, and a line saying how it went."""
    print(f"==> {phase.key}: {phase.label}", flush=True)
    try:
        result = await phase.run(ctx)
    except Exception as exc:  # one broken phase must not hide the others
        result = PhaseResult(phase.key, phase.label)
        result.fail(f"{type(exc).__name__}: {exc}")
    summary = (
        f"{result.msgs_per_s:,.0f} msgs/s, p99 {result.p99_ms} ms"
        if result.msgs_per_s is not None
        else result.reason
    )
    print(f"    {result.status} {summary} ({result.seconds} s)", flush=True)
    for failure in result.failures:
        print(f"    FAIL {phase.key}: {failure}", flush=True)
    return result


COLUMNS = (
    "columns:     msgs/s = tasks confirmed by RabbitMQ per second; CPU ms/1k = CPU ms the "
    "server's processes spent per 1,000 tasks in the peak run (from /proc; `pub`: the raw "
    "publisher's own; `/call`: per 1,000 calls of a row that publishes nothing); p50/p99 "
    "per request "
    "under peak load; p99 at half peak: open loop at half the row's peak (achieved rate "
    "after @; in brackets raw aio-pika's p99 at that message rate, the server idle: the "
    "broker's own tail); peak RSS: VmHWM summed over the server's processes "
    "(raw: the publisher), "
    "for several: how many, the largest, and their Pss summed right after the peak run "
    "(shared libraries counted once); "
    "CPU during the peak run in % of one core: server / RabbitMQ / load generator / "
    "other processes / whole machine (200 = both cores)"
)


def warnings_of(setup: Setup, ordered: list[PhaseResult]) -> list[str]:
    """Rows (and a run) slowed by other work on a shared machine."""
    warnings = [
        f"WARNING {r.key}: {r.cpu['other']:.0f}% of a core went to other processes during the "
        "peak run (a shared machine): this row is slowed by someone else's work"
        for r in ordered
        if r.cpu.get("other", 0.0) > OTHER_CPU_WARNING
    ]
    warnings += report.one_worker_warnings(ordered)
    if setup.idle_busy > OTHER_CPU_WARNING:
        warnings.insert(
            0,
            f"WARNING: the machine was {setup.idle_busy:.0f}% busy (of one core) before "
            "the run started: numbers from a machine that is not idle",
        )
    return warnings


def publish(setup: Setup, results: dict[str, PhaseResult], seconds: float) -> int:
    """Print the table and its notes, write result.json; 1 when any check failed."""
    ordered = [results[p.key] for p in setup.chosen if p.key in results]
    report.add_ratios(setup.chosen, results)
    floors = report.floors(results)
    floor_lines = report.floor_lines(setup.chosen, results, floors)
    verdict_lines = report.verdicts(setup.chosen, results, floors)
    machine = setup.machine
    gateway_python = str(setup.args.gateway_venv / "bin" / "python")
    settings_text = load_settings_text(
        setup.settings, setup.tools, gateway_python, machine["gateway_revision"]
    )
    print()
    print(report.table(ordered))
    print()
    print(
        f"machine:     nproc {machine['nproc']}, {machine['cpu']}, kernel {machine['kernel']}, "
        f"RabbitMQ {machine['rabbitmq']} (shared, same host), Python {machine['python']}"
    )
    print("\n".join(settings_text))
    print(COLUMNS)
    print()
    print("\n".join(floor_lines))
    if verdict_lines:
        print('targets (docs/performance.md, "The targets"; ratios of this run):')
        print("\n".join(verdict_lines))
        print(
            "  memory: flat across a 10-minute run: not checked here (each row runs "
            f"{setup.settings.duration} s; --duration 600 measures it)"
        )
    warnings = warnings_of(setup, ordered)
    if warnings:
        print("\n".join(warnings))
    failures = [f"FAIL {r.key}: {f}" for r in ordered for f in r.failures]
    print(
        "\n".join(failures)
        if failures
        else "verification: every count matched (messages in the queues = successful requests)"
    )
    print(f"run took {seconds:.0f} s; JSON: {setup.out / 'result.json'}")
    document: dict[str, Any] = {
        "machine": machine | {"busy_before_run_percent": str(setup.idle_busy)},
        "warnings": warnings,
        "settings": vars(setup.args) | {"gateway_args": list(setup.settings.gateway_args)},
        "load_generators": settings_text,
        "floors": floors,
        "floor_lines": floor_lines,
        "verdicts": verdict_lines,
        "failures": failures,
    }
    report.write_json(setup.out / "result.json", document, ordered)
    return 1 if failures else 0


async def run(args: argparse.Namespace) -> int:
    """Choose the phases, prepare, run them in a vhost of their own, publish the table."""
    settings = bench_settings(args)
    all_phases = phases(settings)
    if args.list:
        for p in all_phases:
            print(f"{p.key:15} {'default' if p.default else 'opt-in ':8} {p.label}")
        return 0
    setup = await prepare(args, settings, select(all_phases, args.phases, args.auth))
    started = time.monotonic()
    async with asyncio.timeout(setup.timeout()):
        results = await run_phases(setup)
    return publish(setup, results, time.monotonic() - started)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    async def guarded() -> int:
        # Ctrl-C and SIGTERM cancel the run, so that every `finally` stops its processes and the
        # vhost goes. Installed here, not left to asyncio.run: that skips SIGINT when it was
        # inherited as ignored (a background job of a non-interactive shell).
        task = asyncio.current_task()
        assert task is not None
        for signum in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(signum, task.cancel)
        return await run(args)

    try:
        return asyncio.run(guarded())
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("bench: interrupted; servers stopped and the vhost deleted", file=sys.stderr)
        return 130
    except TimeoutError:
        print(
            "bench: the phases ran past their time cap (Setup.timeout); servers stopped and "
            "the vhost deleted",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
