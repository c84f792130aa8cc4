"""The servers under test: the gateway and the two naive baselines, each a fresh process.

Every phase starts its own server, so each row's peak RSS is that path's own and a crash in
one phase cannot spoil the next.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import aiohttp

from bench import procs

READY_TIMEOUT = 30.0


@dataclass
class Server:
    """A running server: where it listens and its processes."""

    label: str
    child: procs.Child
    grpc_address: str | None = None  # host:port
    http_base: str | None = None  # http://host:port
    rss_ready_mb: float = 0.0

    def pids(self) -> list[int]:
        return procs.process_tree(self.child.pid)


@dataclass
class Env:
    """What starting a server needs from the run."""

    root: Path
    python: str  # the project's venv
    gateway_python: str  # build/gateway-venv: the gateway installed as deployed
    amqp_url: str  # the bench vhost
    log_dir: Path
    bench_python: str | None = None  # build/bench-venv (baselines)
    baselines: Path | None = None
    baseline_gen: Path | None = None  # bench_pb2 generated from baselines/proto


class ServerSpec(Protocol):
    @property
    def label(self) -> str: ...

    async def start(self, env: Env, name: str) -> Server: ...


def _clean_environ() -> dict[str, str]:
    """Our environment without any TASK_GATEWAY__* the caller may have exported."""
    return {k: v for k, v in os.environ.items() if not k.startswith("TASK_GATEWAY__")}


async def _wait(server: Server, probe: Callable[[], Awaitable[bool]]) -> Server:
    """Wait until probe() is true; fail (with the log tail) if the process dies or it times out.

    On failure or cancellation the process is stopped here: the caller never got a Server.
    """
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if not server.child.alive():
                raise RuntimeError(f"{server.label} exited at start-up:\n{server.child.tail()}")
            if await probe():
                server.rss_ready_mb = procs.rss_mb(server.pids())
                return server
            await asyncio.sleep(0.2)
        raise RuntimeError(
            f"{server.label} not ready after {READY_TIMEOUT:.0f} s:\n{server.child.tail()}"
        )
    except BaseException:
        await procs.stop(server.child)
        raise


def _port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 0.5).close()
    except OSError:
        return False
    return True


@dataclass(frozen=True)
class Gateway:
    """`python -m gateway`, on free ports, publishing to the bench vhost.

    Log level warning: at info the gateway logs every request, which costs throughput that a
    production deployment (which may well keep info) would also pay; the bench measures the
    publishing path, and says so in its README.
    """

    args: tuple[str, ...] = ()  # --gateway-args passthrough, e.g. ("--workers", "2")
    label: str = "gateway"
    env_overrides: dict[str, str] = field(default_factory=dict)

    async def start(self, env: Env, name: str) -> Server:
        grpc_port, http_port = procs.free_port(), procs.free_port()
        environ = _clean_environ() | {
            "TASK_GATEWAY__RUN_MODE": "production",
            "TASK_GATEWAY__BROKER__ADDRESS": env.amqp_url,
            "TASK_GATEWAY__GRPC__ADDRESS": f"127.0.0.1:{grpc_port}",
            "TASK_GATEWAY__SERVER__ADDRESS": f"127.0.0.1:{http_port}",
            "TASK_GATEWAY__LOG__LEVEL": "warning",  # see the class docstring
            **self.env_overrides,
        }
        argv = [env.gateway_python, "-m", "gateway", *self.args]
        child = await procs.spawn(name, argv, log_dir=env.log_dir, env=environ, cwd=env.root)
        server = Server(
            f"{self.label} ({shlex.join(argv[1:])})",
            child,
            grpc_address=f"127.0.0.1:{grpc_port}",
            http_base=f"http://127.0.0.1:{http_port}",
        )

        async def ready() -> bool:  # /readyz: broker connected and every exchange present
            try:
                async with (
                    aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session,
                    session.get(f"{server.http_base}/readyz") as response,
                ):
                    return response.status == 200
            except (aiohttp.ClientError, TimeoutError):
                return False

        return await _wait(server, ready)


@dataclass(frozen=True)
class NaiveGrpcBaseline:
    """shared/baselines/grpc_baseline.py: grpc.aio + aio-pika, uvloop, in build/bench-venv."""

    label: str = "naive grpc.aio + aio-pika"

    async def start(self, env: Env, name: str) -> Server:
        assert env.bench_python
        assert env.baselines
        assert env.baseline_gen
        port = procs.free_port()
        environ = _clean_environ() | {
            "BROKER_URL": env.amqp_url,
            "PYTHONPATH": str(env.baseline_gen),  # bench_pb2, generated by the bench
            "PYTHONDONTWRITEBYTECODE": "1",  # ../shared is read-only
        }
        argv = [env.bench_python, str(env.baselines / "grpc_baseline.py"), str(port), "--uvloop"]
        child = await procs.spawn(name, argv, log_dir=env.log_dir, env=environ, cwd=env.log_dir)
        server = Server(self.label, child, grpc_address=f"127.0.0.1:{port}")

        async def ready() -> bool:  # it connects to RabbitMQ before it listens
            return _port_open(port)

        return await _wait(server, ready)


@dataclass(frozen=True)
class FastApiBaseline:
    """shared/baselines/fastapi_baseline.py under uvicorn (uvloop), as baselines/run.sh runs it."""

    label: str = "FastAPI + aio-pika"

    async def start(self, env: Env, name: str) -> Server:
        assert env.bench_python
        assert env.baselines
        port = procs.free_port()
        environ = _clean_environ() | {"BROKER_URL": env.amqp_url, "PYTHONDONTWRITEBYTECODE": "1"}
        argv = [
            env.bench_python,
            "-m",
            "uvicorn",
            "fastapi_baseline:app",
            "--app-dir",
            str(env.baselines),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--loop",
            "uvloop",
        ]
        child = await procs.spawn(name, argv, log_dir=env.log_dir, env=environ, cwd=env.log_dir)
        server = Server(self.label, child, http_base=f"http://127.0.0.1:{port}")

        async def ready() -> bool:  # the lifespan connects to RabbitMQ before it listens
            return _port_open(port)

        return await _wait(server, ready)
