"""Publish tasks through the Python SDK's batching publisher, as a service would.

    python -m bench.sdk_driver --address HOST:PORT --duration 10 --warmup 2 \
        [--client async|sync] [--processes P] [--connections C] [--max-batch 100] \
        [--max-outstanding 1000]

Each of P processes opens one client (`task_gateway_client`, imported from clients/python/src)
and one `client.publisher(...)`, and submits the bench's typed task (images.v1 GenerateRequest)
as fast as the publisher takes it: `submit` returns a future at once and waits only while
`max_outstanding` tasks are unanswered, so the publisher stays full and sends PublishBatch
calls of `max_batch` tasks. At the end of the window it stops submitting and flushes: every
future has its outcome, so the success count is exact (the queue count must equal it).

Each client opens C connections (`connections=C`), its calls taking them in turn. A connection
is served by one gateway worker: the kernel spreads connections, not calls, over the workers'
SO_REUSEPORT sockets, by a hash of their addresses, so two connections to two workers land on
one worker about half the time (docs/performance.md, "Workers and connections"). The processes
start together and share the measured window; latency is per task, from `submit` to its
outcome. The output is bench/pydriver.py's: BENCH_MEASURE_START and BENCH_MEASURE_END at the
window's edges (printed by the parent), then one `BENCH_JSON {...}`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.pydriver import cpu_seconds, peak_rss_mb, percentile

ROOT = Path(__file__).resolve().parents[1]
SDK = ROOT / "clients" / "python" / "src"
START_DELAY = 2.0  # seconds for the processes to start and import grpc before the clock runs


def _sdk_path() -> None:
    """The SDK from this checkout's source (as the test suite imports it)."""
    if str(SDK) not in sys.path:
        sys.path.insert(0, str(SDK))


def _cpu_at(moments: tuple[float, float], out: list[float]) -> threading.Thread:
    """A thread noting this process's CPU time at the two moments (perf_counter)."""

    def note() -> None:
        for moment in moments:
            time.sleep(max(0.0, moment - time.perf_counter()))
            out.append(cpu_seconds())

    thread = threading.Thread(target=note, daemon=True)
    thread.start()
    return thread


def _outcome(future: Any) -> str | None:
    error = future.exception()
    if error is None:
        return None
    code = getattr(error, "code", None)
    return f"{type(error).__name__}:{code.name}" if code is not None else type(error).__name__


Record = tuple[float, float, str | None]  # submitted, settled (perf_counter), error or None


def _recorder(records: list[Record], sent: float) -> Callable[[Any], None]:
    """A done-callback noting a task's outcome and when it settled."""

    def settled(future: Any) -> None:
        records.append((sent, time.perf_counter(), _outcome(future)))

    return settled


def _summary(records: list[Record], window: tuple[float, float]) -> dict[str, Any]:
    """What one process saw: (submitted, settled, error) of every task it submitted."""
    start, end = window
    errors: Counter[str] = Counter(e for _, _, e in records if e is not None)
    return {
        "ok_total": sum(1 for _, _, e in records if e is None),
        "errors": dict(errors),
        "window_ok": sum(1 for _, done, e in records if e is None and start <= done <= end),
        "latencies": [done - sent for sent, done, e in records if start <= sent < end],
    }


class SdkTarget:
    """One task through the asyncio client's publisher per call (the bench's preflight)."""

    def __init__(self, address: str, token: str | None = None) -> None:
        self.address, self.token = address, token
        self.client: Any = None

    async def open(self) -> None:
        _sdk_path()
        from task_gateway_client import AsyncTaskGatewayClient

        self.client = AsyncTaskGatewayClient(self.address, token=self.token)
        self.publisher = self.client.publisher()

    async def call(self) -> str | None:
        from bench.payloads import generate_request

        future = await self.publisher.submit(generate_request())
        await self.publisher.flush()
        return _outcome(future)

    async def close(self) -> None:
        await self.client.close()


def run_async(args: argparse.Namespace, origin: float) -> dict[str, Any]:
    _sdk_path()
    import uvloop
    from task_gateway_client import AsyncTaskGatewayClient

    from bench.payloads import generate_request

    window = (origin + args.warmup, origin + args.warmup + args.duration)
    records: list[Record] = []
    cpu: list[float] = []

    async def main() -> None:
        request = generate_request()
        async with AsyncTaskGatewayClient(
            args.address, token=args.token, connections=args.connections
        ) as client:
            publisher = client.publisher(
                max_batch=args.max_batch,
                max_latency=args.max_latency,
                max_outstanding=args.max_outstanding,
            )
            await asyncio.sleep(max(0.0, origin - time.perf_counter()))
            cpu_thread = _cpu_at(window, cpu)
            while (sent := time.perf_counter()) < window[1]:
                future = await publisher.submit(request)
                future.add_done_callback(_recorder(records, sent))
            await publisher.close()  # every task settled
            cpu_thread.join()

    uvloop.run(main())
    return _summary(records, window) | {"cpu_s": cpu[1] - cpu[0]}


def run_sync(args: argparse.Namespace, origin: float) -> dict[str, Any]:
    _sdk_path()
    from task_gateway_client import TaskGatewayClient

    from bench.payloads import generate_request

    window = (origin + args.warmup, origin + args.warmup + args.duration)
    records: list[Record] = []  # list.append is atomic under the GIL
    cpu: list[float] = []
    request = generate_request()
    with TaskGatewayClient(args.address, token=args.token, connections=args.connections) as client:
        publisher = client.publisher(
            max_batch=args.max_batch,
            max_latency=args.max_latency,
            max_outstanding=args.max_outstanding,
        )
        time.sleep(max(0.0, origin - time.perf_counter()))
        cpu_thread = _cpu_at(window, cpu)
        while (sent := time.perf_counter()) < window[1]:
            future = publisher.submit(request)
            future.add_done_callback(_recorder(records, sent))
        publisher.close()  # every task settled
        cpu_thread.join()
    return _summary(records, window) | {"cpu_s": cpu[1] - cpu[0]}


def run_one(args: argparse.Namespace, origin: float) -> dict[str, Any]:
    """One process's run; its peak RSS too (each process reports its own)."""
    result = (run_async if args.client == "async" else run_sync)(args, origin)
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def _markers(window: tuple[float, float]) -> None:
    for marker, moment in zip(("BENCH_MEASURE_START", "BENCH_MEASURE_END"), window, strict=True):
        time.sleep(max(0.0, moment - time.perf_counter()))
        print(marker, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sdk_driver", description=__doc__)
    parser.add_argument("--address", required=True, help="the gateway's gRPC host:port")
    parser.add_argument("--token", help="bearer token, when the gateway requires one")
    parser.add_argument("--client", choices=["async", "sync"], default="async")
    parser.add_argument("--processes", type=int, default=1, help="publishers, one process each")
    parser.add_argument("--connections", type=int, default=1, help="connections of each client")
    parser.add_argument("--max-batch", type=int, default=100)
    parser.add_argument("--max-latency", type=float, default=0.01)
    parser.add_argument("--max-outstanding", type=int, default=1000)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args(argv)

    # CLOCK_MONOTONIC (perf_counter) is system-wide on Linux: every process shares the window.
    origin = time.perf_counter() + START_DELAY
    window = (origin + args.warmup, origin + args.warmup + args.duration)
    markers = threading.Thread(target=_markers, args=(window,), daemon=True)
    markers.start()
    if args.processes == 1:
        results = [run_one(args, origin)]
    else:
        context = multiprocessing.get_context("spawn")  # no forked grpc state
        with context.Pool(args.processes) as pool:
            results = pool.starmap(run_one, [(args, origin)] * args.processes)
    markers.join()
    latencies = [x for r in results for x in r["latencies"]]
    errors: Counter[str] = Counter()
    for r in results:
        errors.update(r["errors"])
    window_ok = sum(r["window_ok"] for r in results)
    document = {
        "ok_total": sum(r["ok_total"] for r in results),
        "errors": dict(errors),
        "window_ok": window_ok,
        "seconds": args.duration,
        "rate": round(window_ok / args.duration, 1),
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "p999_ms": percentile(latencies, 99.9),
        "max_ms": percentile(latencies, 100),
        "service_p50_ms": percentile(latencies, 50),
        "service_p99_ms": percentile(latencies, 99),
        "cpu_percent": round(100 * sum(r["cpu_s"] for r in results) / args.duration, 1),
        "peak_rss_mb": round(sum(r["peak_rss_mb"] for r in results), 1),
    }
    print("BENCH_JSON " + json.dumps(document), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
