"""An asyncio load driver, run in a process of its own (never inside the orchestrator).

    python -m bench.pydriver --target grpc|http|amqp ... (--concurrency N | --rate R)

Closed loop (`--concurrency N`): N workers, each sends its next request when the last one was
answered (what h2load -m / wrk -c do). Open loop (`--rate R`): request i is due at start + i/R
whatever happened before (wrk2-style), so a stall shows up as latency instead of silently
lowering the rate; latency is measured from the due time (coordinated omission corrected) and,
for reference, from the actual send. It serves three purposes:

- the open-loop runs at half the peak rate (h2load's --rps fires all clients' timers together,
  i.e. in bursts, and wrk cannot pace at all);
- the raw publishers (`--target amqp`): the reference, bench/raw_aiopika.py, and
  bench/raw_aiormq.py (`--library aiormq`), half of the Python floor;
- the fallback when h2load or wrk is not installed.

It runs a warm-up, then the measured window, then waits for every request still in flight, so
its success count is exact (the queue count must equal it). Between them it prints
BENCH_MEASURE_START / BENCH_MEASURE_END so the orchestrator samples CPU over the same window,
and at the end one `BENCH_JSON {...}` line. gRPC status codes are read (unlike h2load).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import resource
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

CALL_TIMEOUT = 10.0


class Target(Protocol):
    async def open(self) -> None: ...
    async def call(self) -> str | None: ...  # None: success; else a short error label
    async def close(self) -> None: ...


def split_frames(data: bytes) -> list[bytes]:
    """The messages of a body of length-prefixed gRPC frames (what h2load sends)."""
    messages, i = [], 0
    while i < len(data):
        size = int.from_bytes(data[i + 1 : i + 5], "big")
        messages.append(data[i + 5 : i + 5 + size])
        i += 5 + size
    return messages


class GrpcTarget:
    """Unary calls (one message) or one stream per call (all messages, then half-close)."""

    def __init__(
        self,
        address: str,
        method: str,
        body: bytes,
        channels: int,
        stream: bool,
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.address, self.method, self.stream = address, method, stream
        self.metadata = tuple((k.lower(), v) for k, v in headers) or None
        self.messages = split_frames(body)
        self.n_channels = channels
        self.calls: list[Any] = []
        self.channels: list[Any] = []
        self.next = itertools.cycle(range(channels))

    async def open(self) -> None:
        import grpc
        from taskgateway_api.taskgateway.v1 import gateway_pb2

        self.grpc = grpc
        self.stream_response = gateway_pb2.PublishStreamResponse
        for _ in range(self.n_channels):
            # A local subchannel pool: one TCP connection per channel, as h2load -c opens.
            channel = grpc.aio.insecure_channel(
                self.address, options=[("grpc.use_local_subchannel_pool", 1)]
            )
            self.channels.append(channel)
            # No serializers: requests and responses stay bytes (the prebuilt messages).
            if self.stream:
                self.calls.append(channel.stream_stream(self.method, None, None))
            else:
                self.calls.append(channel.unary_unary(self.method, None, None))

    async def call(self) -> str | None:
        multi_callable = self.calls[next(self.next)]
        try:
            if not self.stream:
                await multi_callable(self.messages[0], timeout=CALL_TIMEOUT, metadata=self.metadata)
                return None
            call = multi_callable(iter(self.messages), timeout=CALL_TIMEOUT, metadata=self.metadata)
            answers = 0
            async for raw in call:  # a response holds the results of the tasks settled together
                for result in self.stream_response.FromString(raw).results:
                    if result.WhichOneof("result") != "task_key":
                        return f"TASK_{result.error.code}"
                    answers += 1
            code = await call.code()
            if code != self.grpc.StatusCode.OK:
                return str(code.name)
            return None if answers == len(self.messages) else "SHORT_STREAM"
        except self.grpc.aio.AioRpcError as exc:
            # The details too: an UNAVAILABLE from grpc's transport (a refused stream, a
            # dropped connection) and one from the gateway (the broker) differ only there.
            return f"{exc.code().name}: {(exc.details() or '')[:60]}"

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()


class HttpTarget:
    """POST the body as JSON over a pool of keep-alive connections."""

    def __init__(
        self, url: str, body: bytes, connections: int, headers: Sequence[tuple[str, str]] = ()
    ) -> None:
        self.url, self.body, self.connections = url, body, connections
        self.headers = {"Content-Type": "application/json", **dict(headers)}

    async def open(self) -> None:
        import aiohttp

        self.aiohttp = aiohttp
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.connections),
            timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT),
            headers=self.headers,
        )

    async def call(self) -> str | None:
        try:
            async with self.session.post(self.url, data=self.body) as response:
                await response.read()
                return None if response.status == 200 else f"HTTP_{response.status}"
        except (self.aiohttp.ClientError, TimeoutError) as exc:
            return type(exc).__name__

    async def close(self) -> None:
        await self.session.close()


@dataclass
class Stats:
    """Outcomes of every request, and the latencies of those due inside the measured window."""

    window: tuple[float, float] = (0.0, 0.0)
    ok_total: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    window_ok: int = 0
    latencies: list[float] = field(default_factory=list)  # from the due time
    service: list[float] = field(default_factory=list)  # from the actual send

    def add(self, due: float, sent: float, done: float, error: str | None) -> None:
        if error is None:
            self.ok_total += 1
        else:
            self.errors[error] += 1
        start, end = self.window
        if error is None and start <= done <= end:
            self.window_ok += 1
        if start <= due < end:
            self.latencies.append(done - due)
            self.service.append(done - sent)


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile, in ms."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered)) - 1))
    return round(ordered[rank] * 1000, 3)


def cpu_seconds() -> float:
    """CPU time of this process so far (every thread), user + system."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _markers(stats: Stats, cpu: list[float]) -> None:
    """Print the window markers at the window's edges, noting our CPU time there."""
    start, end = stats.window
    await asyncio.sleep(max(0.0, start - time.perf_counter()))
    cpu.append(cpu_seconds())
    print("BENCH_MEASURE_START", flush=True)
    await asyncio.sleep(max(0.0, end - time.perf_counter()))
    cpu.append(cpu_seconds())
    print("BENCH_MEASURE_END", flush=True)


async def closed_loop(
    call: Callable[[], Awaitable[str | None]], stats: Stats, workers: int
) -> None:
    end = stats.window[1]

    async def worker() -> None:
        while (sent := time.perf_counter()) < end:
            error = await call()
            stats.add(sent, sent, time.perf_counter(), error)

    await asyncio.gather(*(worker() for _ in range(workers)))


async def open_loop(
    call: Callable[[], Awaitable[str | None]], stats: Stats, rate: float, max_in_flight: int
) -> None:
    origin, end = time.perf_counter(), stats.window[1]
    # Past the cap a due request waits; the wait counts as latency (measured from the due time).
    gate = asyncio.Semaphore(max_in_flight)
    pending: set[asyncio.Task[None]] = set()

    async def one(due: float) -> None:
        async with gate:
            sent = time.perf_counter()
            error = await call()
        stats.add(due, sent, time.perf_counter(), error)

    for i in itertools.count():
        due = origin + i / rate
        if due >= end:
            break
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(due))
        pending.add(task)
        task.add_done_callback(pending.discard)
    await asyncio.gather(*pending)


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM), in MiB.

    Not getrusage's ru_maxrss: after exec it keeps the high-water mark of the image it
    replaced, i.e. of the orchestrator this driver was forked from.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def drive(args: argparse.Namespace, body: bytes) -> dict[str, Any]:
    target: Target
    headers = [tuple(h.split(": ", 1)) for h in args.header]
    if args.target == "grpc":
        target = GrpcTarget(args.address, args.method, body, args.connections, args.stream, headers)
    elif args.target == "http":
        target = HttpTarget(args.address, body, args.connections, headers)
    elif args.library == "aiormq":
        from bench.raw_aiormq import RawAiormqPublisher

        target = RawAiormqPublisher(
            args.address, args.exchange, args.routing_key, json.loads(args.request)
        )
    else:
        from bench.raw_aiopika import RawPublisher

        request = json.loads(args.request)
        target = RawPublisher(
            args.address, args.exchange, args.routing_key, request, message=args.message
        )
    await target.open()
    try:
        now = time.perf_counter()
        stats = Stats(window=(now + args.warmup, now + args.warmup + args.duration))
        cpu: list[float] = []
        markers = asyncio.create_task(_markers(stats, cpu))
        if args.rate:
            await open_loop(target.call, stats, args.rate, args.max_in_flight)
        else:
            await closed_loop(target.call, stats, args.concurrency)
        await markers
    finally:
        await target.close()
    return {
        "ok_total": stats.ok_total,
        "errors": dict(stats.errors),
        "window_ok": stats.window_ok,
        "seconds": args.duration,
        "rate": round(stats.window_ok / args.duration, 1),
        "p50_ms": percentile(stats.latencies, 50),
        "p99_ms": percentile(stats.latencies, 99),
        "p999_ms": percentile(stats.latencies, 99.9),
        "max_ms": percentile(stats.latencies, 100),
        "service_p50_ms": percentile(stats.service, 50),
        "service_p99_ms": percentile(stats.service, 99),
        "cpu_percent": round(100 * (cpu[1] - cpu[0]) / args.duration, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pydriver", description=__doc__)
    parser.add_argument("--target", choices=["grpc", "http", "amqp"], required=True)
    parser.add_argument("--address", required=True, help="host:port, URL or AMQP URL")
    parser.add_argument("--method", help="gRPC method path, /package.Service/Method")
    parser.add_argument("--body", help="request body file (gRPC: length-prefixed frames)")
    parser.add_argument("--stream", action="store_true", help="gRPC: one stream per call")
    parser.add_argument(
        "--header",
        action="append",
        default=[],
        help="'name: value', sent with every request (gRPC: as metadata); repeatable",
    )
    parser.add_argument("--exchange", default="images.tasks")
    parser.add_argument("--routing-key", default="images.generate")
    parser.add_argument("--request", default="{}", help="amqp: the task without task_id, JSON")
    parser.add_argument(
        "--message",
        choices=["gateway", "minimal"],
        default="gateway",
        help="amqp: the gateway's properties and headers, or the baselines' three",
    )
    parser.add_argument(
        "--library",
        choices=["aiopika", "aiormq"],
        default="aiopika",
        help="amqp: bench/raw_aiopika.py or bench/raw_aiormq.py (the gateway's message)",
    )
    parser.add_argument("--connections", type=int, default=8)
    load = parser.add_mutually_exclusive_group(required=True)
    load.add_argument("--concurrency", type=int, help="closed loop: requests in flight")
    load.add_argument("--rate", type=float, help="open loop: requests per second")
    parser.add_argument("--max-in-flight", type=int, default=2048)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args(argv)
    body = Path(args.body).read_bytes() if args.body else b""
    import uvloop  # same event loop as the gateway and the baselines

    result = uvloop.run(drive(args, body))
    print("BENCH_JSON " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
