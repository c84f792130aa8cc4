"""Metrics as an operator reads them: names, labels and counts, over both transports.

In-process gateways share prometheus_client's default registry, so each test reads how a
series moved during the test, not its absolute value.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY
from taskgateway_api.images.v1 import images_pb2, images_pb2_grpc
from taskgateway_api.taskgateway.v1 import gateway_pb2, gateway_pb2_grpc

from tests.conftest import make_settings, url

PAYLOAD = {"model": "m", "prompt": "p", "image_name": "n"}
GENERATE = images_pb2.GenerateRequest(user_id="u1", payload=images_pb2.GeneratePayload(**PAYLOAD))
UNARY = {"grpc_type": "unary", "grpc_service": "images.v1.ImagesService", "grpc_method": "Generate"}


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@contextmanager
def moved(*series: tuple[str, dict[str, str]]) -> Iterator[list[float]]:
    """How much each (name, labels) series moved inside the block (filled in at its end)."""
    before = [value(name, **labels) for name, labels in series]
    changes: list[float] = []
    yield changes
    changes += [value(name, **labels) - b for (name, labels), b in zip(series, before, strict=True)]


async def test_a_unary_call_is_counted_as_go_grpc_middleware_counts_it(start_gateway: Any) -> None:
    """One OK and one refused typed call: started 2, handled OK 1 and InvalidArgument 1."""
    running = await start_gateway(make_settings())
    stub = images_pb2_grpc.ImagesServiceStub(running.channel)
    with moved(
        ("grpc_server_started_total", UNARY),
        ("grpc_server_handled_total", {**UNARY, "grpc_code": "OK"}),
        ("grpc_server_handled_total", {**UNARY, "grpc_code": "InvalidArgument"}),
        ("grpc_server_msg_received_total", UNARY),
        ("grpc_server_msg_sent_total", UNARY),
        ("grpc_server_handling_seconds_count", UNARY),
    ) as changes:
        await stub.Generate(GENERATE, timeout=10)
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Generate(images_pb2.GenerateRequest(user_id="u1"), timeout=10)

    assert changes == [2, 1, 1, 2, 1, 2]


async def test_a_stream_counts_each_message(start_gateway: Any) -> None:
    """A PublishStream of three tasks: three messages received, one call handled OK."""
    running = await start_gateway(make_settings())
    stub = gateway_pb2_grpc.TaskGatewayServiceStub(running.channel)
    entry = gateway_pb2.TaskEntry()
    entry.typed.Pack(GENERATE)
    labels = {
        "grpc_type": "bidi_stream",
        "grpc_service": "taskgateway.v1.TaskGatewayService",
        "grpc_method": "PublishStream",
    }
    with moved(
        ("grpc_server_msg_received_total", labels),
        ("grpc_server_handled_total", {**labels, "grpc_code": "OK"}),
    ) as changes:
        requests = [gateway_pb2.PublishStreamRequest(entry=entry)] * 3
        answers = [a async for a in stub.PublishStream(iter(requests), timeout=10)]

    assert sum(len(a.results) for a in answers) == 3
    assert changes == [3, 1]


async def test_every_method_and_code_starts_at_zero(
    start_gateway: Any, http: aiohttp.ClientSession
) -> None:
    """/metrics lists every method of the gateway's services with every code before any call."""
    running = await start_gateway(make_settings())

    async with http.get(url(running, "/metrics")) as response:
        text = await response.text()
        content_type = response.headers["Content-Type"]

    assert content_type.startswith("text/plain")
    for service, method, kind in (
        ("images.v1.ImagesService", "Edit", "unary"),
        ("videos.v1.VideosService", "Animate", "unary"),
        ("taskgateway.v1.TaskGatewayService", "PublishStream", "bidi_stream"),
        ("taskgateway.v1.TaskGatewayService", "GetTaskTypeSchema", "unary"),
    ):
        for code in ("OK", "InvalidArgument", "ResourceExhausted", "Unauthenticated", "DataLoss"):
            assert (
                f'grpc_server_handled_total{{grpc_code="{code}",grpc_method="{method}",'
                f'grpc_service="{service}",grpc_type="{kind}"}}'
            ) in text
    assert 'task_gateway_build_info{version="' in text


async def test_health_and_reflection_are_counted(start_gateway: Any) -> None:
    """grpc's own services are counted like the gateway's methods."""
    running = await start_gateway(make_settings())
    labels = {"grpc_type": "unary", "grpc_service": "grpc.health.v1.Health", "grpc_method": "Check"}
    with moved(("grpc_server_handled_total", {**labels, "grpc_code": "OK"})) as changes:
        await health_pb2_grpc.HealthStub(running.channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )

    assert changes == [1]


async def test_http_requests_are_timed_by_route_template(
    start_gateway: Any, http: aiohttp.ClientSession
) -> None:
    """A schema request is counted under its template, a stray path under _unmatched."""
    running = await start_gateway(make_settings())
    schema = "/api/v1/task-types/{task_type}/schema"
    with moved(
        (
            "http_server_request_duration_seconds_count",
            {
                "http_request_method": "GET",
                "http_route": schema,
                "http_response_status_code": "200",
            },
        ),
        (
            "http_server_request_duration_seconds_count",
            {
                "http_request_method": "GET",
                "http_route": "_unmatched",
                "http_response_status_code": "404",
            },
        ),
        (
            "http_server_request_duration_seconds_count",
            {
                "http_request_method": "_OTHER",
                "http_route": "_unmatched",
                "http_response_status_code": "404",
            },
        ),
    ) as changes:
        async with http.get(url(running, "/api/v1/task-types/images.generate/schema")) as ok:
            assert ok.status == 200
        async with http.get(url(running, "/some/client/chosen/path")) as missing:
            assert missing.status == 404
        async with http.request("PROPFIND", url(running, "/also/made/up")) as other:
            assert other.status == 404

    assert changes == [1, 1, 1]


async def test_tasks_are_counted_by_type_transport_and_code(
    start_gateway: Any, http: aiohttp.ClientSession
) -> None:
    """Tasks count by outcome; a task type the gateway does not route is `_unknown`."""
    running = await start_gateway(make_settings())
    stub = gateway_pb2_grpc.TaskGatewayServiceStub(running.channel)
    with moved(
        (
            "task_gateway_tasks_total",
            {"task_type": "images.generate", "transport": "grpc", "code": "OK"},
        ),
        (
            "task_gateway_tasks_total",
            {"task_type": "images.generate", "transport": "http", "code": "OK"},
        ),
        (
            "task_gateway_tasks_total",
            {"task_type": "_unknown", "transport": "grpc", "code": "INVALID_ARGUMENT"},
        ),
    ) as changes:
        await images_pb2_grpc.ImagesServiceStub(running.channel).Generate(GENERATE, timeout=10)
        async with http.post(
            url(running, "/api/v1/images/generate"), json={"user_id": "u1", "payload": PAYLOAD}
        ) as response:
            assert response.status == 200
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Publish(
                gateway_pb2.PublishRequest(user_id="u1", task_type="made.up.by.client"),
                timeout=10,
            )

    assert changes == [1, 1, 1]
    assert (
        value(
            "task_gateway_tasks_total",
            task_type="made.up.by.client",
            transport="grpc",
            code="INVALID_ARGUMENT",
        )
        == 0
    )
    assert value("task_gateway_publishes_in_flight") == 0
