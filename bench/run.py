"""`make bench`: one command, one run, one table (bench/README.md).

    .venv/bin/python -m bench.run [--phases default,+grpc.batch] [--duration 10] ...

Creates a private vhost on the local RabbitMQ with the topology of definitions.json, runs each
phase (raw aio-pika reference, the gateway's unary gRPC and REST, the naive baselines when
../shared/baselines exists), checks every count, prints the table and writes result.json, and
deletes the vhost, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # `python bench/run.py`: make `bench` and the gateway importable
    sys.path[:0] = [str(ROOT), str(ROOT / "src"), str(ROOT / "src" / "generated")]

from yarl import URL  # noqa: E402

from bench import broker, payloads, procs, report  # noqa: E402
from bench.loadgen import Tools  # noqa: E402
from bench.phases import Context, Phase, PhaseResult, Settings, phases  # noqa: E402
from bench.servers import Env  # noqa: E402

RUN_TIMEOUT = 900.0  # hard cap on a whole run, whatever the settings
OTHER_CPU_WARNING = 25.0  # % of one core used by other processes that makes a row suspect


async def machine_busy(seconds: float = 2.0) -> float:
    """% of one core the machine is busy with while the bench does nothing."""
    before = procs.machine_busy_ticks()
    await asyncio.sleep(seconds)
    after = procs.machine_busy_ticks()
    ncpu = os.cpu_count() or 1
    return round(100 * ncpu * (after[0] - before[0]) / max(after[1] - before[1], 1), 1)


def _git(*args: str) -> str:
    """What `git ARGS` prints in this checkout (raises when git is missing or fails)."""
    return subprocess.run(
        ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True, timeout=10
    ).stdout.strip()


def default_baselines() -> Path:
    """$(git rev-parse --show-toplevel)/../shared/baselines."""
    try:
        top = _git("rev-parse", "--show-toplevel")
    except (subprocess.SubprocessError, OSError):
        top = str(ROOT)
    return (Path(top) / ".." / "shared" / "baselines").resolve()


def gateway_revision() -> str:
    """The commit the gateway runs from, `+dirty` when src/ or proto/ has local changes."""
    try:
        head = _git("rev-parse", "--short", "HEAD")
        dirty = _git("status", "--porcelain", "--", "src", "proto")
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
        "(e.g. default,+grpc.batch,+grpc.stream); --list shows them",
    )
    p.add_argument("--list", action="store_true", help="list the phases and exit")
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
    p.add_argument("--out", type=Path, default=ROOT / "build/bench")
    return p.parse_args(argv)


def select(all_phases: list[Phase], spec: str) -> list[Phase]:
    """Phases named by --phases, in their declared order."""
    keys = {p.key for p in all_phases}
    chosen: set[str] = set()
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


def baseline_setup(
    args: argparse.Namespace, work: Path
) -> tuple[Path | None, str | None, str | None]:
    """(baselines dir, bench venv python, why the baselines are skipped or None)."""
    baselines = (args.baselines or default_baselines()).resolve()
    if not (baselines / "grpc_baseline.py").exists():
        return None, None, f"no baselines at {baselines}"
    python = args.bench_venv / "bin" / "python"
    if not (args.bench_venv / ".installed").exists() or not python.exists():
        return (
            baselines,
            None,
            (
                f"no baseline venv at {args.bench_venv} "
                "(make bench creates it: bench/setup_baselines.py)"
            ),
        )
    return baselines, str(python), None


def load_settings_text(settings: Settings, tools: Tools, ctx_env: Env, revision: str) -> list[str]:
    d = tools.describe()
    gateway_args = settings.gateway_args
    return [
        f"gRPC peak:   {d['grpc']}",
        f"REST peak:   {d['rest']}",
        f"raw peak:    bench/pydriver.py --target amqp (bench/raw_aiopika.py): "
        f"{settings.raw_in_flight} publishes in flight, each awaits its confirm",
        "half peak:   bench/pydriver.py open loop at half the row's peak rate, uniform "
        f"schedule, latency from the due time; gRPC {tools.h2load_clients} channels, "
        f"REST {tools.wrk_connections} connections",
        f"durations:   warm-up {settings.warmup} s (h2load/wrk: a run of its own, then purge; "
        f"pydriver: same process, counted), peak {settings.duration} s, half peak 1 s + "
        f"{settings.half_duration} s; a fresh server process per row",
        f"gateway:     {shlex.join([ctx_env.gateway_python, '-m', 'gateway', *gateway_args])} "
        f"(pip install . without the dev extra; RUN_MODE=production, LOG__LEVEL=warning), "
        f"code at {revision}",
    ]


async def run(args: argparse.Namespace) -> int:
    out: Path = args.out
    work, logs = out / "work", out / "logs"
    shutil.rmtree(logs, ignore_errors=True)
    for d in (work, logs):
        d.mkdir(parents=True, exist_ok=True)
    gateway_args = tuple(shlex.split(args.gateway_args))
    if args.workers:
        gateway_args += ("--workers", str(args.workers))
    settings = Settings(
        duration=args.duration,
        warmup=args.warmup,
        half_duration=args.half_duration,
        raw_in_flight=args.raw_in_flight,
        batch_size=args.batch_size,
        stream_size=args.stream_size,
        gateway_args=gateway_args,
    )
    all_phases = phases(settings)
    if args.list:
        for p in all_phases:
            print(f"{p.key:15} {'default' if p.default else 'opt-in ':8} {p.label}")
        return 0
    chosen = select(all_phases, args.phases)

    use_tools = args.loadgen == "auto"
    tools = Tools(
        h2load=shutil.which("h2load") if use_tools else None,
        wrk=shutil.which("wrk") if use_tools else None,
        h2load_clients=args.h2load_clients,
        h2load_streams=args.h2load_streams,
        h2load_threads=args.h2load_threads,
        wrk_threads=args.wrk_threads,
        wrk_connections=args.wrk_connections,
        log_dir=logs,
    )
    baselines, bench_python, skip = baseline_setup(args, work)
    bench_pb2 = None
    if skip is None and baselines is not None and any(p.baseline for p in chosen):
        try:
            bench_pb2 = payloads.baseline_stubs(baselines / "proto", work / "baseline-gen")
        except (subprocess.SubprocessError, OSError, ImportError) as exc:
            skip = f"cannot generate bench_pb2 from {baselines}/proto: {exc}"

    amqp = URL(args.amqp_url)
    vhost = broker.Vhost.from_definitions(
        args.definitions,
        amqp.host or "127.0.0.1",
        amqp.port or 5672,
        amqp.user or "guest",
        amqp.password or "guest",
    )
    env = Env(
        root=ROOT,
        python=sys.executable,
        gateway_python=str(args.gateway_venv / "bin" / "python"),
        amqp_url=vhost.url,
        log_dir=logs,
        bench_python=bench_python,
        baselines=baselines,
        baseline_gen=work / "baseline-gen",
    )
    rabbitmq_version = await asyncio.to_thread(broker.rabbitmq_version)
    machine = report.machine(rabbitmq_version) | {"gateway_revision": gateway_revision()}
    print(f"bench: {', '.join(p.key for p in chosen)}")
    print(
        f"machine: {machine['nproc']} x {machine['cpu']}, RabbitMQ {rabbitmq_version}, "
        f"Python {machine['python']}"
    )
    if not tools.h2load or not tools.wrk:
        print(
            "load generators: h2load or wrk missing, using bench/pydriver.py for those "
            "(apt-get install nghttp2-client wrk; bench/install-tools.sh)"
        )
    if skip:
        print(f"baselines skipped: {skip}")
    idle_busy = await machine_busy()
    print(f"machine busy before the run: {idle_busy:.0f}% of one core")

    results: dict[str, PhaseResult] = {}
    started = time.monotonic()
    try:
        await vhost.create()
        print(f"vhost: {vhost.name}")
        ctx = Context(
            settings,
            vhost,
            env,
            tools,
            broker.broker_pid(amqp.port or 5672),
            work,
            bench_pb2=bench_pb2,
            skip_baselines=skip,
        )
        for phase in chosen:
            print(f"==> {phase.key}: {phase.label}", flush=True)
            try:
                result = await phase.run(ctx)
            except Exception as exc:  # one broken phase must not hide the others
                result = PhaseResult(phase.key, phase.label)
                result.fail(f"{type(exc).__name__}: {exc}")
            results[phase.key] = result
            summary = (
                f"{result.msgs_per_s:,.0f} msgs/s, p99 {result.p99_ms} ms"
                if result.msgs_per_s is not None
                else result.reason
            )
            print(f"    {result.status} {summary} ({result.seconds} s)", flush=True)
            for failure in result.failures:
                print(f"    FAIL {phase.key}: {failure}", flush=True)
    finally:
        await vhost.delete()

    ordered = [results[p.key] for p in chosen if p.key in results]
    report.add_ratios(chosen, results)
    verdict_lines = report.verdicts(chosen, results)
    settings_text = load_settings_text(settings, tools, env, machine["gateway_revision"])
    print()
    print(report.table(ordered))
    print()
    print(
        f"machine:     nproc {machine['nproc']}, {machine['cpu']}, kernel {machine['kernel']}, "
        f"RabbitMQ {rabbitmq_version} (shared, same host), Python {machine['python']}"
    )
    print("\n".join(settings_text))
    print(
        "columns:     msgs/s = tasks confirmed by RabbitMQ per second; p50/p99 per request "
        "under peak load; p99 at half peak: open loop at half the row's peak (achieved rate "
        "after @; in brackets raw aio-pika's p99 at that message rate, the server idle: the "
        "broker's own tail); peak RSS: VmHWM summed over the server's processes "
        "(raw: the publisher), "
        "for several: how many, the largest, and their Pss summed right after the peak run "
        "(shared libraries counted once); "
        "CPU during the peak run in % of one core: server / RabbitMQ / load generator / "
        "other processes / whole machine (200 = both cores)"
    )
    if verdict_lines:
        print("DESIGN §9 targets:")
        print("\n".join(verdict_lines))
    warnings = [
        f"WARNING {r.key}: {r.cpu['other']:.0f}% of a core went to other processes during the "
        "peak run (a shared machine): this row is slowed by someone else's work"
        for r in ordered
        if r.cpu.get("other", 0.0) > OTHER_CPU_WARNING
    ]
    if idle_busy > OTHER_CPU_WARNING:
        warnings.insert(
            0,
            f"WARNING: the machine was {idle_busy:.0f}% busy (of one core) before "
            "the run started: numbers from a machine that is not idle",
        )
    if warnings:
        print("\n".join(warnings))
    failures = [f"FAIL {r.key}: {f}" for r in ordered for f in r.failures]
    print(
        "\n".join(failures)
        if failures
        else "verification: every count matched (messages in the queues = successful requests)"
    )
    print(f"run took {time.monotonic() - started:.0f} s; JSON: {out / 'result.json'}")
    report.write_json(
        out / "result.json",
        {
            "machine": machine | {"busy_before_run_percent": str(idle_busy)},
            "warnings": warnings,
            "settings": vars(args) | {"gateway_args": list(gateway_args)},
            "load_generators": settings_text,
            "verdicts": verdict_lines,
            "failures": failures,
        },
        ordered,
    )
    return 1 if failures else 0


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
        async with asyncio.timeout(RUN_TIMEOUT):
            return await run(args)

    try:
        return asyncio.run(guarded())
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("bench: interrupted; servers stopped and the vhost deleted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
