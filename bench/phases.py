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
from bench.sdk_driver import SdkTarget
from bench.servers import (
    AiohttpFloor,
    Env,
    FastApiBaseline,
    Gateway,
    NaiveGrpcBaseline,
    PeerServer,
    Server,
    ServerSpec,
)
from tests.support import procs
from tests.support.rabbitmq import Topology

# Seconds at the start of a half-peak run that its latency leaves out (connections opening).
HALF_WARMUP = 1
# Streams that may wait for their answer on one connection in an open-loop h2load run: the
# gateway's grpc.max_concurrent_streams, far above what half the peak rate keeps in flight.
HALF_STREAMS = 100


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
    sdk_client: str = "async"  # bench/sdk_driver.py --client
    sdk_processes: int = 2  # bench/sdk_driver.py --processes
    sdk_connections: int = 2  # bench/sdk_driver.py --connections (of each process's client)


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
    # CPU ms per task during the peak run: the server's processes (the raw rows: the
    # publisher's; rows that publish nothing: per call), and what it was taken over.
    cpu_ms_per_task: float | None = None
    cpu_basis: str = ""
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
    over the other's, and the verdicts check the targets (docs/performance.md, "The targets").
    floor: "grpc" or "rest": the verdicts hold this row's CPU per task to that Python floor.
    """

    key: str
    label: str
    server: ServerSpec | None = None
    msgs_per_request: int = 1
    half_peak: bool = True
    compare: tuple[tuple[str, float | None], ...] = ()
    default: bool = True  # in the run unless --phases says otherwise
    baseline: bool = False  # needs ../shared/baselines and build/bench-venv
    peer: str | None = None  # needs that peer of ../shared/baselines/peers, built
    auth: bool = False  # the server requires a bearer token; the load generators send it
    floor: str | None = None

    @property
    def is_gateway(self) -> bool:
        return isinstance(self.server, Gateway)

    def auth_headers(self, ctx: Context) -> tuple[tuple[str, str], ...]:
        """The bearer token, for the phases whose server requires one."""
        return (("authorization", f"Bearer {ctx.env.auth_token}"),) if self.auth else ()

    # -- what subclasses provide -------------------------------------------------------------
    def target(self, ctx: Context, server: Server | None) -> Target:
        raise NotImplementedError

    async def peak_run(self, ctx: Context, server: Server | None, target: Target) -> LoadResult:
        raise NotImplementedError

    def half_connections(self, ctx: Context) -> int:
        return ctx.tools.h2load_clients

    async def half_run(
        self, ctx: Context, server: Server | None, target: Target, rate: float
    ) -> LoadResult:
        """Open loop at `rate` requests/s: the Python driver, latency from each due time."""
        return await loadgen.pydriver(
            ctx.tools,
            target,
            seconds=ctx.settings.half_duration,
            warmup=HALF_WARMUP,
            cpu=self.sampler(ctx, server),
            name=f"{self.key}.half",
            rate=rate,
            connections=self.half_connections(ctx),
        )

    # -- the common sequence ------------------------------------------------------------------
    async def run(self, ctx: Context) -> PhaseResult:
        result = PhaseResult(self.key, self.label)
        started = time.monotonic()
        if self.baseline and ctx.skip_baselines:
            result.status, result.reason = "skipped", ctx.skip_baselines
            return result
        if self.peer is not None:
            built = ctx.env.peers.get(self.peer)
            if built is None or built.skip:
                result.status = "skipped"
                result.reason = built.skip if built else f"the {self.peer} peer was not built"
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
            landed = await self.verify(ctx, result, peak, "peak")
            k = self.msgs_per_request or 1
            result.msgs_per_s = round(peak.rate * k, 1)
            result.p50_ms, result.p99_ms, result.cpu = peak.p50_ms, peak.p99_ms, peak.cpu
            result.cpu_ms_per_task, result.cpu_basis = self.cpu_per_task(peak, landed)
            if self.half_peak and peak.rate > 0:
                half = await self.half_run(ctx, server, target, peak.rate / 2)
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
        client: GrpcTarget | HttpTarget | SdkTarget
        if target.kind == "amqp":
            return True
        if target.kind == "sdk":
            client = SdkTarget(target.address, target.token)
        else:
            assert target.body_file is not None
            body = target.body_file.read_bytes()
            if target.kind == "grpc":
                client = GrpcTarget(
                    target.address, target.method, body, 1, target.stream, target.headers
                )
            else:
                client = HttpTarget(target.address, body, 1, target.headers)
        await client.open()
        try:
            error = await client.call()
        finally:
            await client.close()
        if error is not None:
            result.fail(f"preflight: one request by hand failed: {error}")
            return False
        landed = await ctx.topology.settle(timeout=5, quiet=0.3)
        if landed != self.msgs_per_request:  # 0 for the rows that publish nothing
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
    ) -> int:
        """Count what landed against what the load generator saw succeed; purge; the count."""
        landed = await ctx.topology.settle()
        k = self.msgs_per_request if per_request is None else per_request
        low, high = run.expect[0] * k, run.expect[1] * k
        expected = f"{low}" if low == high else f"{low}..{high}"
        result.runs[what] = asdict(run) | {"landed": landed, "rate": round(run.rate, 1)}
        if run.errors:
            result.fail(f"{what}: {run.tool} saw failed requests: {run.errors}")
        if not low <= landed <= high:
            result.fail(
                f"{what}: {landed} messages in the queues, expected {expected}"
                f" ({run.tool}: {run.expect[0]} successful requests x {k})"
            )
        else:
            result.checks.append(f"{what}: {landed} messages landed, expected {expected}: ok")
        await ctx.topology.purge()
        return landed

    def cpu_per_task(self, run: LoadResult, landed: int) -> tuple[float | None, str]:
        """CPU ms per task over the run's CPU window, and what that was taken over.

        The server's processes (from /proc); the raw rows have no server: their publisher's
        own (getrusage in the driver). The tasks are the messages counted in the queue when the
        window spans the whole run (h2load, wrk); the Python drivers' runs also hold a counted
        warm-up, so theirs are the tasks confirmed inside the window (the queue count checks
        the total). Rows that publish nothing (Echo, the bare aiohttp handler): per call.
        """
        seconds = run.cpu.get("seconds")
        percent = run.cpu.get("server" if self.server is not None else "loadgen")
        if self.msgs_per_request == 0:
            tasks, basis = run.ok, "call"
        elif run.cpu_covers_run:
            tasks, basis = landed, "task"
        else:
            tasks, basis = run.ok * self.msgs_per_request, "task"
        if not seconds or percent is None or tasks <= 0:
            return None, ""
        who = "server" if self.server is not None else "publisher"
        return round(percent / 100 * seconds * 1000 / tasks, 4), f"{who} per {basis}"

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
        return Target(
            "grpc",
            server.grpc_address,
            body,
            self.method,
            self.stream,
            headers=self.auth_headers(ctx),
        )

    def half_connections(self, ctx: Context) -> int:
        return self.clients or ctx.tools.h2load_clients

    async def half_run(
        self, ctx: Context, server: Server | None, target: Target, rate: float
    ) -> LoadResult:
        """A row of one task per call: open loop through h2load, whose CPU per request is under
        a tenth of the Python driver's. At a two-worker half peak the driver took a third of a
        core from the machine the gateway and the broker share, and doubled the p99 it
        measured (docs/performance.md, "The tail at half the peak rate"). Up to HALF_STREAMS
        streams wait on a connection, so that a request is sent when it is due and its latency
        counts from then.

        Batches and streams keep the Python driver: its cost is per call, a hundredth per task
        there, and h2load's clients keep time together, so that its 8 connections would send
        their 100-task calls at the same moments, bursts of 800 tasks where the driver spreads
        them evenly (a p99 of 181 ms against 65-69 for PublishBatch at about the same rate)."""
        if not ctx.tools.h2load or (self.msgs_per_request or 1) > 1:
            return await super().half_run(ctx, server, target, rate)
        return await loadgen.h2load(
            ctx.tools,
            target,
            ctx.settings.half_duration + HALF_WARMUP,
            self.sampler(ctx, server),
            f"{self.key}.half",
            clients=self.half_connections(ctx),
            streams=HALF_STREAMS,
            rate=rate,
            skip_seconds=HALF_WARMUP,
        )

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
        return Target("http", server.http_base + self.path, body, headers=self.auth_headers(ctx))

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


def raw_target(ctx: Context, message: str = "gateway", library: str = "aiopika") -> Target:
    """bench/raw_aiopika.py (or raw_aiormq.py) publishing the legacy task to the bench vhost."""
    return Target(
        "amqp",
        ctx.env.amqp_url,
        amqp_request=dict(payloads.LEGACY_REQUEST),
        amqp_message=message,
        amqp_library=library,
    )


@dataclass(frozen=True)
class RawPhase(Phase):
    """A raw publisher straight to the vhost, no server: aio-pika (the reference) or aiormq."""

    message: str = "gateway"  # the gateway's properties and headers, or "minimal"
    library: str = "aiopika"  # or "aiormq" (the gateway's message only)

    def target(self, ctx: Context, server: Server | None) -> Target:
        return raw_target(ctx, self.message, self.library)

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


@dataclass(frozen=True)
class SdkPhase(Phase):
    """The Python SDK's batching publisher against the gateway (bench/sdk_driver.py)."""

    half_peak: bool = False  # it is a client: its rate is the row, not its latency

    def target(self, ctx: Context, server: Server | None) -> Target:
        assert server is not None
        assert server.grpc_address
        token = ctx.env.auth_token if self.auth else None
        return Target("sdk", server.grpc_address, token=token)

    async def peak_run(self, ctx: Context, server: Server | None, target: Target) -> LoadResult:
        s = ctx.settings
        return await loadgen.sdk(
            ctx.tools,
            target,
            seconds=s.duration,
            warmup=s.warmup,
            cpu=self.sampler(ctx, server),
            name=f"{self.key}.peak",
            client=s.sdk_client,
            processes=s.sdk_processes,
            connections=s.sdk_connections,
        )


def _generate_request(ctx: Context) -> Sequence[Message]:
    return [payloads.generate_request()]


def _baseline_request(ctx: Context) -> Sequence[Message]:
    assert ctx.bench_pb2 is not None
    return [payloads.baseline_publish_request(ctx.bench_pb2)]


def phases(settings: Settings) -> list[Phase]:
    """Every phase, in run (and table) order. `default=False` ones run only on request.

    The ratio targets are docs/performance.md's ("The targets"): unary gRPC >= 1.5x the naive
    baseline, REST >= 2x FastAPI, batch, stream and the SDK's publisher >= 1x raw aiormq and
    >= 1x the Node peer's typed unary rate; `floor` holds a row's CPU per task to its floor.
    """
    gateway = Gateway(args=settings.gateway_args)
    gateway_auth = Gateway(args=settings.gateway_args, auth=True)
    naive, fastapi = NaiveGrpcBaseline(), FastApiBaseline()
    unary = (("baseline.grpc", 1.5), ("raw", None))
    rest = (("baseline.rest", 2.0), ("raw", None))
    many = (("raw.aiormq", 1.0), ("peer.node.typed", 1.0), ("raw", None))
    batch, stream = settings.batch_size, settings.stream_size
    typed = "/images.v1.ImagesService/Generate"
    return [
        RawPhase(
            "raw.minimal",
            "raw aio-pika, the baselines' message",
            message="minimal",
            half_peak=False,
            compare=(("raw", None),),
        ),
        RawPhase("raw", f"raw aio-pika, confirms, {settings.raw_in_flight} in flight"),
        RawPhase(
            "raw.aiormq",
            f"raw aiormq, confirms, {settings.raw_in_flight} in flight",
            library="aiormq",
            half_peak=False,
            compare=(("raw", None),),
        ),
        GrpcPhase(
            "grpc.typed",
            "gateway gRPC images.v1.ImagesService/Generate",
            server=gateway,
            method=typed,
            messages=_generate_request,
            compare=unary,
            floor="grpc",
        ),
        # Opt-in (--auth): the same row with authentication required, read back to back.
        GrpcPhase(
            "grpc.typed.auth",
            "gateway gRPC ImagesService/Generate, auth on",
            server=gateway_auth,
            method=typed,
            messages=_generate_request,
            compare=(("grpc.typed", None), *unary),
            floor="grpc",
            auth=True,
            default=False,
        ),
        GrpcPhase(
            "grpc.generic",
            "gateway gRPC TaskGatewayService/Publish",
            server=gateway,
            method="/taskgateway.v1.TaskGatewayService/Publish",
            messages=lambda ctx: [payloads.publish_request()],
            compare=unary,
            floor="grpc",
        ),
        # Few calls in flight: each carries `batch` tasks, and broker.max_in_flight (4096)
        # bounds the publishes awaiting confirms. One call per connection: the kernel spreads
        # connections over the workers, and 8 of them leave one worker idle once in 128 runs,
        # 2 of them once in 2 (docs/performance.md, "Workers and connections").
        GrpcPhase(
            "grpc.batch",
            f"gateway gRPC PublishBatch x{batch}",
            server=gateway,
            method="/taskgateway.v1.TaskGatewayService/PublishBatch",
            messages=lambda ctx: [payloads.batch_request(batch)],
            msgs_per_request=batch,
            clients=8,
            streams=1,
            compare=many,
        ),
        GrpcPhase(
            "grpc.stream",
            f"gateway gRPC PublishStream x{stream}/stream",
            server=gateway,
            method="/taskgateway.v1.TaskGatewayService/PublishStream",
            stream=True,
            messages=lambda ctx: payloads.stream_requests(stream),
            msgs_per_request=stream,
            clients=8,
            streams=1,
            compare=many,
        ),
        SdkPhase(
            "sdk.publisher",
            f"SDK batching publisher ({settings.sdk_client}, {settings.sdk_processes} proc"
            f" x {settings.sdk_connections} conn)",
            server=gateway,
            compare=(*many, ("grpc.batch", None)),
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
            compare=rest,
            floor="rest",
        ),
        RestPhase(
            "rest.auth",
            "gateway REST POST /api/v1/broker/publish, auth on",
            server=gateway_auth,
            compare=(("rest", None), *rest),
            floor="rest",
            auth=True,
            default=False,
        ),
        RestPhase(
            "baseline.rest", "FastAPI + aio-pika REST publish", server=fastapi, baseline=True
        ),
        RestPhase(
            "floor.rest",
            "bare aiohttp handler (no broker)",
            server=AiohttpFloor(),
            msgs_per_request=0,
            half_peak=False,
        ),
        # The peers publish the same message to the same queue; h2load and wrk run with the
        # gateway rows' settings. No half-peak run: the latency target is the gateway's.
        GrpcPhase(
            "peer.go.typed",
            "Go peer gRPC ImagesService/Generate",
            server=PeerServer("go", "Go peer (grpc-go + amqp091-go)"),
            method=typed,
            messages=_generate_request,
            peer="go",
            half_peak=False,
            compare=(("grpc.typed", None),),
        ),
        RestPhase(
            "peer.go.rest",
            "Go peer REST POST /api/v1/broker/publish",
            server=PeerServer("go", "Go peer (net/http + amqp091-go)"),
            peer="go",
            half_peak=False,
            compare=(("rest", None),),
        ),
        GrpcPhase(
            "peer.node.typed",
            "Node peer gRPC ImagesService/Generate",
            server=PeerServer("node", "Node peer (grpc-js + amqplib)"),
            method=typed,
            messages=_generate_request,
            peer="node",
            half_peak=False,
            compare=(("grpc.typed", None),),
        ),
        RestPhase(
            "peer.node.rest",
            "Node peer REST POST /api/v1/broker/publish",
            server=PeerServer("node", "Node peer (node:http + amqplib)"),
            peer="node",
            half_peak=False,
            compare=(("rest", None),),
        ),
    ]
