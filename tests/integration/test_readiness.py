"""The gateway's readiness is every worker's: no probe says SERVING while one cannot publish."""

from __future__ import annotations

import asyncio
import signal

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from taskgateway_api.images.v1 import images_pb2, images_pb2_grpc

from tests.conftest import through
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
