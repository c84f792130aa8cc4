"""Readiness: every worker's (no probe says SERVING while one cannot publish), and every
exchange's as it is now (one deleted at run time turns /readyz not ready)."""

from __future__ import annotations

import asyncio
import signal

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from taskgateway_api.images.v1 import images_pb2, images_pb2_grpc

from tests.conftest import RunningGateway, through, url
from tests.support.gateway_process import OWN_CONNECTION, read_until, start_gateway_process
from tests.support.ports import free_port
from tests.support.rabbitmq import Topology
from tests.support.tcp_proxy import TcpProxy
from tests.support.waits import hang_guard

SERVING = health_pb2.HealthCheckResponse.SERVING
REQUEST = images_pb2.GenerateRequest(
    user_id="u1", payload=images_pb2.GeneratePayload(model="m", prompt="p", image_name="n")
)


async def _health(address: str) -> int:
    """The overall health status, asked on a new connection (the kernel picks the worker)."""
    async with grpc.aio.insecure_channel(address, options=OWN_CONNECTION) as channel:
        answer = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
        return int(answer.status)


async def _publish(address: str) -> grpc.StatusCode:
    """One typed publish on a new connection; its status code."""
    async with grpc.aio.insecure_channel(address, options=OWN_CONNECTION) as channel:
        try:
            await images_pb2_grpc.ImagesServiceStub(channel).Generate(REQUEST, timeout=10)
        except grpc.aio.AioRpcError as error:
            return error.code()
        return grpc.StatusCode.OK


async def test_no_worker_says_serving_until_every_worker_can_publish(
    rabbitmq_url: str, topology: Topology, proxy: TcpProxy
) -> None:
    """With one worker's broker connection held back, every probe says NOT_SERVING; once it is
    through, a burst over fresh connections right after the first SERVING is all OK."""
    proxy.hold = {1}  # the second control connection: one of the two workers
    grpc_address = f"127.0.0.1:{free_port()}"
    gateway = await start_gateway_process(
        {
            "TASK_GATEWAY__BROKER__ADDRESS": through(proxy, rabbitmq_url),
            "TASK_GATEWAY__BROKER__CONNECT_TIMEOUT_SECONDS": "60",
            "TASK_GATEWAY__GRPC__ADDRESS": grpc_address,
            "TASK_GATEWAY__SERVER__ADDRESS": f"127.0.0.1:{free_port()}",
        },
        "--workers",
        "2",
    )
    try:
        await read_until(gateway, "connected to RabbitMQ")  # the worker that got through
        await proxy.until_arrived(2)
        while_held = [await _health(grpc_address) for _ in range(12)]
        proxy.release()
        async with hang_guard("a probe said SERVING once the held connection was released"):
            while await _health(grpc_address) != SERVING:
                pass  # each probe asks on a new connection, either worker may answer
        codes = await asyncio.gather(*(_publish(grpc_address) for _ in range(40)))
    finally:
        gateway.send_signal(signal.SIGTERM)
        await asyncio.wait_for(gateway.communicate(), 30)

    assert SERVING not in while_held, while_held
    assert set(codes) == {grpc.StatusCode.OK}, codes
    assert len(await topology.drain("images.queue")) == 40


async def _readyz(http: aiohttp.ClientSession, gateway: RunningGateway) -> tuple[int, str]:
    """/readyz's status and reason."""
    async with http.get(url(gateway, "/readyz")) as answer:
        return answer.status, (await answer.json()).get("reason", "")


async def _readyz_until(
    http: aiohttp.ClientSession, gateway: RunningGateway, *, ready: bool, what: str
) -> tuple[int, str]:
    """/readyz asked every 0.1 s until it says ready (200) or not, as `ready`: that answer."""
    async with hang_guard(what):
        while True:
            answer = await _readyz(http, gateway)
            if (answer[0] == 200) == ready:
                return answer
            await asyncio.sleep(0.1)


@pytest.mark.parametrize("published", [False, True], ids=["no lane", "lane open"])
async def test_readiness_follows_an_exchange_deleted_and_declared_again(
    gateway: RunningGateway, topology: Topology, http: aiohttp.ClientSession, published: bool
) -> None:
    """/readyz is 200; once images.tasks is deleted it turns 503 naming it, and 200 again once
    the exchange is declared again: whether readiness checked it on the control connection
    before, or a publish opened its lane (checked on the lane's connection)."""
    if published:
        assert await _publish(gateway.address) == grpc.StatusCode.OK
    before = await _readyz(http, gateway)

    await topology.delete_exchange("images.tasks")
    deleted = await _readyz_until(
        http, gateway, ready=False, what="/readyz said not ready after the exchange was deleted"
    )
    await topology.declare_exchange("images.tasks")
    declared = await _readyz_until(
        http, gateway, ready=True, what="/readyz said ready after the exchange was declared again"
    )

    assert before == (200, "")
    assert deleted == (503, "exchanges missing on the broker: images.tasks")
    assert declared == (200, "")
