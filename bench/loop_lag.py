"""How long one hostile batch can hold a worker's event loop: `python -m bench.loop_lag`.

Starts a gateway in this process (in-memory broker) with a probe that measures how late the
event loop runs a 1 ms timer, then sends, from another process, requests of the size
`grpc.max_request_bytes` allows (1 MB by default): a gRPC PublishBatch of empty entries and
the same over REST (both refused: over the entry cap), and the largest batch allowed of real
tasks over both transports (published). Prints the longest stall of the loop during each.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

from taskgateway_api.images.v1 import images_pb2
from taskgateway_api.taskgateway.v1 import gateway_pb2

from gateway.app.server import Gateway
from tests.support.settings import make_settings

# The client: one raw request, gRPC (frame bytes from stdin) or HTTP, in a process of its own
# so that building and sending it takes nothing from the gateway's loop.
_CLIENT = """
import sys, grpc, urllib.request
kind, target = sys.argv[1], sys.argv[2]
body = sys.stdin.buffer.read()
if kind == "grpc":
    options = [("grpc.max_receive_message_length", 64 << 20)]
    with grpc.insecure_channel(target, options=options) as ch:
        call = ch.unary_unary("/taskgateway.v1.TaskGatewayService/PublishBatch")
        try:
            answer = call(body, timeout=120)
            print("OK", len(answer))
        except grpc.RpcError as error:
            print(error.code().name, error.details()[:80])
else:
    request = urllib.request.Request(target, body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            print(answer.status, len(answer.read()))
    except urllib.error.HTTPError as error:
        print(error.code, error.read()[:80])
"""


def _typed_entry() -> gateway_pb2.TaskEntry:
    entry = gateway_pb2.TaskEntry()
    entry.typed.Pack(
        images_pb2.GenerateRequest(
            user_id="u1",
            payload=images_pb2.GeneratePayload(model="m", prompt="p" * 200, image_name="n"),
        )
    )
    return entry


def _cases(max_bytes: int, max_entries: int) -> list[tuple[str, str, bytes]]:
    empty = max_bytes // 2 - 16  # 2 bytes each on the wire: as many as 1 MB holds
    hostile = gateway_pb2.PublishBatchRequest(entries=[gateway_pb2.TaskEntry()] * empty)
    allowed = gateway_pb2.PublishBatchRequest(entries=[_typed_entry()] * max_entries)
    rest_allowed = {
        "entries": [
            {
                "publish": {
                    "user_id": "u1",
                    "task_type": "images.generate",
                    "payload": {"model": "m", "prompt": "p" * 200, "image_name": "n"},
                }
            }
        ]
        * max_entries
    }
    rest_hostile = {"entries": [{}] * ((max_bytes - 64) // 4)}  # ", {}": 4 bytes each
    return [
        ("grpc", f"1 MB batch of {empty:,} empty entries", hostile.SerializeToString()),
        ("grpc", f"{max_entries:,} typed entries (the cap)", allowed.SerializeToString()),
        ("http", f"{len(rest_hostile['entries']):,} entries in 1 MB", json.dumps(rest_hostile)),
        ("http", f"{max_entries:,} entries (the cap)", json.dumps(rest_allowed)),
    ]  # type: ignore[list-item]


async def _probe(lags: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        await asyncio.sleep(0.001)
        lags.append(time.perf_counter() - started - 0.001)


async def main() -> int:
    settings = make_settings()
    gateway = Gateway(settings)
    await gateway.start()
    try:
        print(f"{'request':45} | {'answer':40} | longest loop stall")
        for kind, name, body in _cases(
            settings.grpc.max_request_bytes, settings.grpc.max_batch_entries
        ):
            raw = body if isinstance(body, bytes) else body.encode()
            target = (
                f"127.0.0.1:{gateway.grpc_port}"
                if kind == "grpc"
                else f"http://127.0.0.1:{gateway.http_port}/api/v1/broker/publish-batch"
            )
            lags: list[float] = []
            stop = asyncio.Event()
            probe = asyncio.create_task(_probe(lags, stop))
            client = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                _CLIENT,
                kind,
                target,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            answer, _ = await client.communicate(raw)
            stop.set()
            await probe
            worst = max(lags) * 1000 if lags else float("nan")
            print(f"{kind} {name:40} | {answer.decode().strip()[:40]:40} | {worst:.1f} ms")
    finally:
        await gateway.stop(grace=1)
    return 0


def run() -> int:
    import structlog

    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(40)  # errors only: no per-task lines
    )
    return asyncio.run(main())


if __name__ == "__main__":
    sys.exit(run())
