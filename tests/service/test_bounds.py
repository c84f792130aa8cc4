"""Transport bounds: concurrent calls, connections, their age and idleness, per worker."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc
import pytest
from taskgateway_api.images.v1 import images_pb2_grpc

from tests.conftest import make_settings, replace_settings
from tests.service.test_grpc_service import REQUEST, HeldBroker


async def test_calls_over_max_concurrent_rpcs_are_refused_at_once(start_gateway: Any) -> None:
    """With grpc.max_concurrent_rpcs=2 and two calls held, a third is RESOURCE_EXHAUSTED."""
    broker = HeldBroker()
    settings = replace_settings(make_settings(), "grpc", max_concurrent_rpcs=2)
    running = await start_gateway(settings, broker)
    stub = images_pb2_grpc.ImagesServiceStub(running.channel)
    held = [asyncio.ensure_future(stub.Generate(REQUEST, timeout=10)) for _ in range(2)]
    await broker.until_waiting(2)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Generate(REQUEST, timeout=10)

    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    broker.release.set()
    answers = [await call for call in held]
    assert all(answer.task_key for answer in answers)
    assert len(broker.published) == 2


async def test_a_connection_past_its_max_age_is_asked_to_go_away(start_gateway: Any) -> None:
    """After grpc.max_connection_age_seconds the server sends GOAWAY: the channel leaves READY."""
    settings = replace_settings(
        make_settings(),
        "grpc",
        max_connection_age_seconds=0.3,
        max_connection_age_grace_seconds=1.0,
    )
    running = await start_gateway(settings)
    stub = images_pb2_grpc.ImagesServiceStub(running.channel)
    await stub.Generate(REQUEST, timeout=10)
    assert running.channel.get_state() == grpc.ChannelConnectivity.READY

    async with asyncio.timeout(10):
        await running.channel.wait_for_state_change(grpc.ChannelConnectivity.READY)

    assert running.channel.get_state() != grpc.ChannelConnectivity.READY
    answer = await stub.Generate(REQUEST, timeout=10)  # and the channel reconnects by itself
    assert answer.task_key.startswith("u1:image-generation:")


async def _request(port: int, connection: tuple[Any, Any]) -> bytes:
    """GET /healthz on an open keep-alive connection; the status line (the answer read whole)."""
    reader, writer = connection
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
    await writer.drain()
    status = await reader.readline()
    length = 0
    while (line := await reader.readline()) != b"\r\n":
        name, _, value = line.decode().partition(":")
        if name.lower() == "content-length":
            length = int(value)
    await reader.readexactly(length)
    return bytes(status)


async def test_connections_over_max_connections_are_answered_503(start_gateway: Any) -> None:
    """With server.max_connections=2 and two open, a third gets 503 and is closed."""
    settings = replace_settings(make_settings(), "server", max_connections=2)
    running = await start_gateway(settings)
    port = running.gateway.http_port
    first = await asyncio.open_connection("127.0.0.1", port)
    second = await asyncio.open_connection("127.0.0.1", port)
    assert await _request(port, first) == b"HTTP/1.1 200 OK\r\n"
    assert await _request(port, second) == b"HTTP/1.1 200 OK\r\n"

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    refused = await reader.read()  # the whole answer, then the server closes

    assert refused.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"server.max_connections" in refused
    assert await _request(port, first) == b"HTTP/1.1 200 OK\r\n", "the open ones go on"
    for _, open_writer in (first, second, (reader, writer)):
        open_writer.close()


async def test_an_idle_connection_is_closed_after_the_keepalive_timeout(
    start_gateway: Any,
) -> None:
    """A connection that sends nothing is closed after server.keepalive_timeout_seconds."""
    settings = replace_settings(make_settings(), "server", keepalive_timeout_seconds=0.2)
    running = await start_gateway(settings)
    reader, writer = await asyncio.open_connection("127.0.0.1", running.gateway.http_port)

    async with asyncio.timeout(10):
        closed = await reader.read()

    assert closed == b""
    writer.close()


async def test_the_http_parser_limits_are_applied(
    start_gateway: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A header line over 8190 bytes is refused by the parser (aiohttp took the settings)."""
    running = await start_gateway(make_settings())
    port = running.gateway.http_port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    with caplog.at_level(logging.WARNING):
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Long: " + b"a" * 9000 + b"\r\n\r\n")
        status = await reader.readline()

    assert status.split()[1] in (b"400", b"431")
    assert "Failed to create request handler" not in caplog.text
    writer.close()
