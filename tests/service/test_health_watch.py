"""grpc.health.v1.Health/Watch streams, which anyone may open and keep open, against
grpc.max_concurrent_rpcs: they cannot take the slots the gateway's own calls need."""

from __future__ import annotations

from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from taskgateway_api.taskgateway.v1 import gateway_pb2, gateway_pb2_grpc

from tests.conftest import make_settings, replace_settings
from tests.support.waits import hang_guard


async def test_watch_streams_leave_room_for_the_gateways_calls(start_gateway: Any) -> None:
    """With grpc.max_concurrent_rpcs=10 and ten Watch streams asked for, one is open (a tenth
    of the limit), the others are refused RESOURCE_EXHAUSTED naming the setting, and a
    ListTaskTypes call still succeeds."""
    settings = replace_settings(make_settings(), "grpc", max_concurrent_rpcs=10)
    running = await start_gateway(settings)
    health = health_pb2_grpc.HealthStub(running.channel)
    watches = [health.Watch(health_pb2.HealthCheckRequest()) for _ in range(10)]
    opened, refused = [], []
    async with hang_guard("the first answer of each Watch"):
        for watch in watches:
            try:
                opened.append(await watch.read())
            except grpc.aio.AioRpcError as error:
                refused.append(error)

    answer = await gateway_pb2_grpc.TaskGatewayServiceStub(running.channel).ListTaskTypes(
        gateway_pb2.ListTaskTypesRequest(), timeout=10
    )

    assert answer.task_types
    assert [response.status for response in opened] == [health_pb2.HealthCheckResponse.SERVING]
    assert {error.code() for error in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert all("grpc.max_concurrent_rpcs" in (error.details() or "") for error in refused)
    for watch in watches:
        watch.cancel()


async def test_a_closed_watch_frees_its_place(start_gateway: Any) -> None:
    """Once the open Watch stream is cancelled by its client, another may open."""
    settings = replace_settings(make_settings(), "grpc", max_concurrent_rpcs=10)
    running = await start_gateway(settings)
    health = health_pb2_grpc.HealthStub(running.channel)
    first = health.Watch(health_pb2.HealthCheckRequest())
    await first.read()
    first.cancel()

    refused = set()
    async with hang_guard("a Watch opened after the first one closed"):
        while True:
            second = health.Watch(health_pb2.HealthCheckRequest())
            try:
                answer = await second.read()
            except grpc.aio.AioRpcError as error:  # the server may not have seen the cancel yet
                refused.add(error.code())
                continue
            break

    assert answer.status == health_pb2.HealthCheckResponse.SERVING
    assert refused <= {grpc.StatusCode.RESOURCE_EXHAUSTED}
    second.cancel()
