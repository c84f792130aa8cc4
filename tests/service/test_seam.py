"""The call seam: both transports build one CallContext and go through the same middlewares."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc
import pytest
from google.protobuf.message import Message
from grpc_reflection.v1alpha import reflection_pb2
from taskgateway_api.images.v1 import images_pb2, images_pb2_grpc
from taskgateway_api.taskgateway.v1 import gateway_pb2, gateway_pb2_grpc

import gateway.app.server
from gateway.core.context import CallContext
from gateway.core.method import Method, StreamHandler, UnaryHandler
from gateway.core.middleware import Middleware
from tests.conftest import make_settings

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
GENERATE = images_pb2.GenerateRequest(
    user_id="u1", payload=images_pb2.GeneratePayload(model="m", prompt="p", image_name="n")
)


class Recorder(Middleware):
    """Records each call it sees (and, for streams, each request), in order, under a label."""

    def __init__(self, label: str, seen: list[tuple[str, str, CallContext]]) -> None:
        self.label = label
        self.seen = seen

    def unary(self, method: Method, handler: UnaryHandler) -> UnaryHandler:
        async def recorded(request: Any, call: CallContext) -> Message:
            self.seen.append((self.label, method.full_name, call))
            return await handler(request, call)

        return recorded

    def stream(self, method: Method, handler: StreamHandler) -> StreamHandler:
        async def recorded(requests: AsyncIterator[Any], call: CallContext) -> AsyncIterator[Any]:
            self.seen.append((self.label, method.full_name, call))
            async for response in handler(requests, call):
                yield response

        return recorded


@pytest.fixture
def seen(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, CallContext]]:
    """Gateways started in the test get two recording middlewares after the built-in ones."""
    calls: list[tuple[str, str, CallContext]] = []
    built_in = gateway.app.server.middlewares
    monkeypatch.setattr(
        gateway.app.server,
        "middlewares",
        lambda settings, tracer=None, **hooks: [
            *built_in(settings),
            Recorder("outer", calls),
            Recorder("inner", calls),
        ],
    )
    return calls


async def test_both_transports_reach_a_method_through_the_same_middlewares(
    start_gateway: Any, seen: list[tuple[str, str, CallContext]]
) -> None:
    """A gRPC call and a REST call to one RPC pass each middleware once, outermost first."""
    running = await start_gateway(make_settings())
    stub = images_pb2_grpc.ImagesServiceStub(running.channel)
    await stub.Generate(
        GENERATE,
        timeout=30,
        metadata=(("traceparent", TRACEPARENT), ("x-request-id", "grpc-1")),
    )
    async with aiohttp.ClientSession() as http:
        response = await http.post(
            f"http://127.0.0.1:{running.gateway.http_port}/api/v1/images/generate",
            json={"user_id": "u1", "payload": {"model": "m", "prompt": "p", "image_name": "n"}},
            headers={"traceparent": TRACEPARENT, "X-Request-Id": "http-1", "Grpc-Timeout": "30S"},
        )
        assert response.status == 200, await response.text()

    generate = "/images.v1.ImagesService/Generate"
    assert [(label, name) for label, name, _ in seen] == [
        ("outer", generate),
        ("inner", generate),
        ("outer", generate),
        ("inner", generate),
    ]
    grpc_call, http_call = seen[0][2], seen[2][2]
    assert seen[1][2] is grpc_call, "one context per call"
    assert seen[3][2] is http_call, "one context per call"
    for call, transport, request_id in (
        (grpc_call, "grpc", "grpc-1"),
        (http_call, "http", "http-1"),
    ):
        assert call.transport == transport
        assert call.method == generate
        assert "127.0.0.1" in call.peer
        assert call.request_id == request_id
        assert call.trace is not None
        assert call.trace.traceparent == TRACEPARENT
        remaining = call.remaining()
        assert remaining is not None
        assert 0 < remaining <= 31  # gRPC rounds a timeout up to its unit


async def test_streams_go_through_the_middlewares_too(
    start_gateway: Any, seen: list[tuple[str, str, CallContext]]
) -> None:
    """PublishStream over gRPC reaches its method through both middlewares, outermost first."""
    running = await start_gateway(make_settings())
    stub = gateway_pb2_grpc.TaskGatewayServiceStub(running.channel)
    entry = gateway_pb2.TaskEntry()
    entry.typed.Pack(GENERATE)

    answers = [
        response
        async for response in stub.PublishStream(
            iter([gateway_pb2.PublishStreamRequest(entry=entry)]), timeout=30
        )
    ]

    assert [r.task_key for answer in answers for r in answer.results]
    stream = "/taskgateway.v1.TaskGatewayService/PublishStream"
    assert [(label, name) for label, name, _ in seen] == [("outer", stream), ("inner", stream)]
    assert seen[0][2].transport == "grpc"


async def test_health_and_reflection_stay_outside_the_seam(
    start_gateway: Any, seen: list[tuple[str, str, CallContext]]
) -> None:
    """gRPC health and reflection calls reach no middleware."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    running = await start_gateway(make_settings())
    await health_pb2_grpc.HealthStub(running.channel).Check(
        health_pb2.HealthCheckRequest(), timeout=10
    )
    await _reflect(running.channel, "grpc.reflection.v1alpha.ServerReflection")

    assert seen == []


async def _reflect(channel: grpc.aio.Channel, service: str) -> list[str]:
    """The services listed by the reflection service `service` (v1 or v1alpha)."""
    call = channel.stream_stream(
        f"/{service}/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    responses = [response async for response in call(iter([request]), timeout=10)]
    return [s.name for s in responses[0].list_services_response.service]


@pytest.mark.parametrize(
    "service", ["grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"]
)
async def test_reflection_answers_as_v1_and_v1alpha(start_gateway: Any, service: str) -> None:
    """Both reflection versions list the gateway's services and both reflection services."""
    running = await start_gateway(make_settings())

    services = await _reflect(running.channel, service)

    assert {
        "images.v1.ImagesService",
        "videos.v1.VideosService",
        "taskgateway.v1.TaskGatewayService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= set(services)


async def test_reflection_v1_describes_a_typed_rpc(start_gateway: Any) -> None:
    """v1's file_containing_symbol returns the contract file that declares ImagesService."""
    running = await start_gateway(make_settings())
    call = running.channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    request = reflection_pb2.ServerReflectionRequest(
        file_containing_symbol="images.v1.ImagesService"
    )

    (response,) = [r async for r in call(iter([request]), timeout=10)]

    from google.protobuf import descriptor_pb2

    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in response.file_descriptor_response.file_descriptor_proto
    ]
    assert "images/v1/images.proto" in [f.name for f in files]
