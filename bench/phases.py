"""The phases of a bench run: one row of the table each, declared in `phases()` at the bottom.

A phase starts its server (or none, for the raw reference), checks one request by hand, then:
warm-up, purge, peak run (closed loop, fixed duration), count the queues, purge, run at half the
peak rate (open loop), count, purge, read the server's peak RSS, stop the server. Adding a row is
adding an entry to `phases()`, e.g. a gRPC method with a different message:

    GrpcPhase("grpc.edit", "gateway gRPC images.v1.ImagesService/Edit", server=gateway,
              method="/images.v1.ImagesService/Edit", messages=lambda ctx: [edit_request()],
              compare=(("raw", None),))

`messages` returns the request message(s) of one call; `msgs_per_request` says how many tasks one
call publishes (the queue check and the msgs/s column use it); `stream=True` sends the messages
on one stream per call; `clients`/`streams` override h2load's -c/-m for that phase.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from google.protobuf.message import Message

from bench import loadgen, payloads
from bench.loadgen import CpuSampler, LoadResult, Target, Tools
from bench.pydriver import GrpcTarget, HttpTarget
from bench.servers import Env, FastApiBaseline, Gateway, NaiveGrpcBaseline, Server, ServerSpec
from tests.support import procs
from tests.support.rabbitmq import Topology


@dataclass(frozen=True)
class Settings:
    """The knobs of a run (command-line options of bench/run.py)."""

    duration: int = 10  # seconds of each measured peak run
    warmup: int = 2  # seconds of load before it, not measured
    half_duration: int = 8  # seconds of the run at half the peak rate
    raw_in_flight: int = 256  # concurrent publishes of the raw aio-pika reference
    batch_size: int = 100
    stream_size: int = 100
    gateway_args: tuple[str, ...] = ()


@dataclass
class Context:
    """Everything a phase needs: the vhost's queues, the tools, where to start servers and write
    files."""

    settings: Settings
    topology: Topology  # the bench vhost's
    env: Env
    tools: Tools
    broker_pid: int | None
    work: Path
    bench_pb2: ModuleType | None = None  # the naive baseline's messages, when it runs
    skip_baselines: str | None = None  # why the baselines do not run, when they do not


@dataclass
class PhaseResult:
    """One row of the table, with everything behind it for result.json."""

    key: str
    label: str
    status: str = "ok"  # ok | FAIL | skipped
    reason: str = ""
    msgs_per_s: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    half_rate: float | None = None  # msgs/s of the half-peak run
    half_p99_ms: float | None = None
    half_p50_ms: float | None = None
    # raw aio-pika's p99, open loop at the same message rate as the half-peak run, with the
    # server idle: the broker's own tail on this machine at that rate.
    broker_half_p99_ms: float | None = None
    peak_rss_mb: float | None = None  # sum over the server's process tree
    peak_rss_each_mb: dict[int, float] = field(default_factory=dict)  # pid -> VmHWM
    rss_ready_mb: float | None = None
    pss_after_peak_mb: float | None = None  # Pss summed over the tree, right after the peak run
    cpu: dict[str, float] = field(default_factory=dict)
    checks: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    runs: dict[str, Any] = field(default_factory=dict)
    ratios: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    def fail(self, message: str) -> None:
        self.status = "FAIL"
        self.failures.append(message)


@dataclass(frozen=True)
class Phase:
    """A row: what to start, how to load it, what to compare it with.

    compare: (other phase key, target ratio or None) pairs; the table shows this phase's msgs/s
    over the other's, and the verdicts check the targets (DESIGN §9).
    """

    key: str
    label: str
    server: ServerSpec | None = None
    msgs_per_request: int = 1
    half_peak: bool = True
    compare: tuple[tuple[str, float | None], ...] = ()
    default: bool = True  # in the run unless --phases says otherwise
    baseline: bool = False  # needs ../shared/baselines and build/bench-venv

    # -- what subclasses provide -------------------------------------------------------------
    def target(self, ctx: Context, server: Server | None) -> Target:
        raise NotImplementedError

    async def peak_run(self, ctx: Context, server: Server | None, target: Target) -> LoadResult:
        raise NotImplementedError

    def half_connections(self, ctx: Context) -> int:
        return ctx.tools.h2load_clients

    # -- the common sequence ------------------------------------------------------------------
    async def run(self, ctx: Context) -> PhaseResult:
        result = PhaseResult(self.key, self.label)
        started = time.monotonic()
        if self.baseline and ctx.skip_baselines:
            result.status, result.reason = "skipped", ctx.skip_baselines
            return result
        server = await self.server.start(ctx.env, self.key) if self.server else None
        try:
            if server is not None:
                result.rss_ready_mb = round(server.rss_ready_mb, 1)
            target = self.target(ctx, server)
            await ctx.topology.purge()
            if not await self.preflight(ctx, target, result):
                return result
            peak = await self.peak_run(ctx, server, target)
            if server is not None:
                result.pss_after_peak_mb = round(procs.pss_mb(server.pids()), 1)
            await self.verify(ctx, result, peak, "peak")
            k = self.msgs_per_request or 1
            result.msgs_per_s = round(peak.rate * k, 1)
            result.p50_ms, result.p99_ms, result.cpu = peak.p50_ms, peak.p99_ms, peak.cpu
            if self.half_peak and peak.rate > 0:
                half = await loadgen.pydriver(
                    ctx.tools,
                    target,
                    seconds=ctx.settings.half_duration,
                    warmup=1.0,
                    cpu=self.sampler(ctx, server),
                    name=f"{self.key}.half",
                    rate=peak.rate / 2,
                    connections=self.half_connections(ctx),
                )
                await self.verify(ctx, result, half, "half-peak")
                result.half_rate = round(half.rate * k, 1)
                result.half_p50_ms, result.half_p99_ms = half.p50_ms, half.p99_ms
                if server is not None and not self.baseline:
                    floor = await loadgen.pydriver(
                        ctx.tools,
                        raw_target(ctx),
                        seconds=ctx.settings.half_duration,
                        warmup=1.0,
                        cpu=None,
                        name=f"{self.key}.broker-at-half",
                        rate=half.rate * k,
                        connections=1,
                    )
                    await self.verify(ctx, result, floor, "broker-at-half", per_request=1)
                    result.broker_half_p99_ms = floor.p99_ms
            if server is not None:
                result.peak_rss_each_mb = procs.peak_rss_each_mb(server.pids())
                result.peak_rss_mb = round(sum(result.peak_rss_each_mb.values()), 1)
                if not server.child.alive():
                    result.fail(f"{server.label} died during the phase:\n{server.child.tail()}")
            else:  # the raw reference: the publisher reports its own peak
                result.peak_rss_mb = max(
                    (r.get("extra", {}).get("peak_rss_mb") or 0.0) for r in result.runs.values()
                )
        finally:
            if server is not None:
                await procs.stop(server.child)
            result.seconds = round(time.monotonic() - started, 1)
        return result

    def sampler(self, ctx: Context, server: Server | None) -> CpuSampler:
        return CpuSampler(server.pids() if server else [], ctx.broker_pid)

    async def preflight(self, ctx: Context, target: Target, result: PhaseResult) -> bool:
        """One call by hand: it must succeed and publish exactly msgs_per_request messages.

        This also proves that the frame h2load will send is what the server expects, since
        h2load itself cannot see a gRPC error.
        """
        client: GrpcTarget | HttpTarget
        if target.kind == "amqp":
            return True
        assert target.body_file is not None
        body = target.body_file.read_bytes()
        if target.kind == "grpc":
            client = GrpcTarget(target.address, target.method, body, 1, target.stream)
        else:
            client = HttpTarget(target.address, body, 1)
        await client.open()
        try:
            error = await client.call()
        finally:
            await client.close()
        if error is not None:
            result.fail(f"preflight: one request by hand failed: {error}")
            return False
        landed = await ctx.topology.settle(timeout=5, quiet=0.3)
        if landed != self.msgs_per_request:
            result.fail(
                f"preflight: one request published {landed} messages, "
                f"expected {self.msgs_per_request}"
            )
            return False
        result.checks.append(f"preflight: 1 request OK, {landed} message(s) published")
        await ctx.topology.purge()
        return True

    async def verify(
        self,
        ctx: Context,
        result: PhaseResult,
        run: LoadResult,
        what: str,
        per_request: int | None = None,
    ) -> None:
        """Count what landed against what the load generator saw succeed; purge."""
        landed = await ctx.topology.settle()
        k = per_request or self.msgs_per_request
        low, high = run.expect[0] * k, run.expect[1] * k
        result.runs[what] = asdict(run) | {"landed": landed, "rate": round(run.rate, 1)}
        if run.errors:
            result.fail(f"{what}: {run.tool} saw failed requests: {run.errors}")
        if not low <= landed <= high:
            result.fail(
                f"{what}: {landed} messages in the queues, expected "
                + (f"{low}" if low == high else f"{low}..{high}")
                + f" ({run.tool}: {run.expect[0]} successful requests x {k})"
            )
        else:
            expected = f"{low}" if low == high else f"{low}..{high}"
            result.checks.append(f"{what}: {landed} messages landed, expected {expected}: ok")
        await ctx.topology.purge()

    async def warm_and_purge(self, ctx: Context, run: Callable[[], Any]) -> None:
        """A separate warm-up run: h2load's own --warm-up-time requests go uncounted but still
        publish, which would spoil the queue check, so warm up apart and purge after."""
        await run()
        await ctx.topology.settle()
        await ctx.topology.purge()


def _write(ctx: Context, name: str, data: bytes) -> Path:
    path = ctx.work / name
    path.write_bytes(data)
    return path


@dataclass(frozen=True)
class GrpcPhase(Phase):
    """A gRPC method, driven by h2load with a prebuilt frame (or the Python driver)."""

    method: str = ""
    messages: Callable[[Context], Sequence[Message]] = lambda ctx: []
    stream: bool = False
    clients: int | None = None  # h2load -c for this phase
    streams: int | None = None  # h2load -m for this phase

    def target(self, ctx: Context, server: Server | None) -> Target:
        assert server is not None
        assert server.grpc_address
        frames = payloads.grpc_frames([m.SerializeToString() for m in self.messages(ctx)])
        body = _write(ctx, f"{self.key}.grpc.bin", frames)
        return Target("grpc", server.grpc_address, body, self.method, self.stream)

    def half_connections(self, ctx: Context) -> int:
        return self.clients or ctx.tools.h2load_clients

    async def peak_run(self, ctx: Context, server: Server | None, target: Target) -> LoadResult:
        tools, s = ctx.tools, ctx.settings
        c = self.clients or tools.h2load_clients
        m = self.streams or tools.h2load_streams
        if tools.h2load:
            await self.warm_and_purge(
                ctx,
                lambda: loadgen.h2load(
                    tools, target, s.warmup, None, f"{self.key}.warmup", clients=c, streams=m
                ),
            )
            return await loadgen.h2load(
                tools,
                target,
                s.duration,
                self.sampler(ctx, server),
                f"{self.key}.peak",
                clients=c,
                streams=m,
            )
        return await loadgen.pydriver(
            tools,
            target,
            seconds=s.duration,
            warmup=s.warmup,
            cpu=self.sampler(ctx, server),
            name=f"{self.key}.peak",
            concurrency=c * m,
            connections=c,
        )


@dataclass(frozen=True)
class RestPhase(Phase):
    """POST the legacy JSON body, driven by wrk (or the Python driver)."""

    path: str = "/api/v1/broker/publish"

    def target(self, ctx: Context, server: Server | None) -> Target:
        assert server is not None
        assert server.http_base
        body = _write(ctx, f"{self.key}.json", payloads.rest_body())
        return Target("http", server.http_base + self.path, body)

    def half_connections(self, ctx: Context) -> int:
        return ctx.tools.wrk_connections

    async def peak_run(self, ctx: Context, server: Server | None, target: Target) -> LoadResult:
        tools, s = ctx.tools, ctx.settings
        if tools.wrk:
            await self.warm_and_purge(
                ctx, lambda: loadgen.wrk(tools, target, s.warmup, None, f"{self.key}.warmup")
            )
            return await loadgen.wrk(
                tools, target, s.duration, self.sampler(ctx, server), f"{self.key}.peak"
            )
        return await loadgen.pydriver(
            tools,
            target,
            seconds=s.duration,
            warmup=s.warmup,
            cpu=self.sampler(ctx, server),
            name=f"{self.key}.peak",
            concurrency=tools.wrk_connections,
            connections=tools.wrk_connections,
        )


def raw_target(ctx: Context, message: str = "gateway") -> Target:
    """bench/raw_aiopika.py publishing the legacy task straight to the bench vhost."""
    return Target(
        "amqp", ctx.env.amqp_url, amqp_request=dict(payloads.LEGACY_REQUEST), amqp_message=message
    )


@dataclass(frozen=True)
class RawPhase(Phase):
    """The reference: bench/raw_aiopika.py publishing straight to the vhost, no server."""

    message: str = "gateway"  # the gateway's properties and headers, or "minimal"

    def target(self, ctx: Context, server: Server | None) -> Target:
        return raw_target(ctx, self.message)

    async def peak_run(self, ctx: Context, server: Server | None, target: Target) -> LoadResult:
        s = ctx.settings
        return await loadgen.pydriver(
            ctx.tools,
            target,
            seconds=s.duration,
            warmup=s.warmup,
            cpu=self.sampler(ctx, None),
            name=f"{self.key}.peak",
            concurrency=s.raw_in_flight,
        )


def _baseline_request(ctx: Context) -> Sequence[Message]:
    assert ctx.bench_pb2 is not None
    return [payloads.baseline_publish_request(ctx.bench_pb2)]


def phases(settings: Settings) -> list[Phase]:
    """Every phase, in run (and table) order. `default=False` ones run only on request."""
    gateway = Gateway(args=settings.gateway_args)
    naive, fastapi = NaiveGrpcBaseline(), FastApiBaseline()
    vs_naive = (("baseline.grpc", 2.0), ("raw", None))
    batch, stream = settings.batch_size, settings.stream_size
    return [
        RawPhase(
            "raw.minimal",
            "raw aio-pika, the baselines' message",
            message="minimal",
            half_peak=False,
            compare=(("raw", None),),
        ),
        RawPhase("raw", f"raw aio-pika, confirms, {settings.raw_in_flight} in flight"),
        GrpcPhase(
            "grpc.typed",
            "gateway gRPC images.v1.ImagesService/Generate",
            server=gateway,
            method="/images.v1.ImagesService/Generate",
            messages=lambda ctx: [payloads.generate_request()],
            compare=vs_naive,
        ),
        GrpcPhase(
            "grpc.generic",
            "gateway gRPC TaskGatewayService/Publish",
            server=gateway,
            method="/taskgateway.v1.TaskGatewayService/Publish",
            messages=lambda ctx: [payloads.publish_request()],
            compare=vs_naive,
        ),
        # Batch and stream (DESIGN §9: >= 1x raw aio-pika). Few calls in flight: each carries
        # `batch` tasks, and broker.max_in_flight (4096) bounds the publishes awaiting confirms.
        GrpcPhase(
            "grpc.batch",
            f"gateway gRPC PublishBatch x{batch}",
            server=gateway,
            method="/taskgateway.v1.TaskGatewayService/PublishBatch",
            messages=lambda ctx: [payloads.batch_request(batch)],
            msgs_per_request=batch,
            clients=2,
            streams=4,
            compare=(("raw", 1.0),),
        ),
        GrpcPhase(
            "grpc.stream",
            f"gateway gRPC PublishStream x{stream}/stream",
            server=gateway,
            method="/taskgateway.v1.TaskGatewayService/PublishStream",
            stream=True,
            messages=lambda ctx: payloads.stream_requests(stream),
            msgs_per_request=stream,
            clients=2,
            streams=4,
            compare=(("raw", 1.0),),
        ),
        GrpcPhase(
            "baseline.grpc",
            "naive grpc.aio + aio-pika Publish",
            server=naive,
            method="/bench.v1.Broker/Publish",
            messages=_baseline_request,
            baseline=True,
        ),
        GrpcPhase(
            "baseline.echo",
            "naive grpc.aio Echo (no broker)",
            server=naive,
            method="/bench.v1.Broker/Echo",
            messages=_baseline_request,
            baseline=True,
            msgs_per_request=0,
            half_peak=False,
        ),
        RestPhase(
            "rest",
            "gateway REST POST /api/v1/broker/publish",
            server=gateway,
            compare=(("baseline.rest", 2.0), ("raw", None)),
        ),
        RestPhase(
            "baseline.rest", "FastAPI + aio-pika REST publish", server=fastapi, baseline=True
        ),
    ]
