"""Transport bounds: concurrent calls, connections, their age and idleness, per worker."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import grpc
import pytest
from taskgateway_api.images.v1 import images_pb2_grpc

from tests.conftest import make_settings, memory_broker, replace_settings
from tests.service.test_grpc_service import REQUEST, HeldBroker
from tests.support.gateway_process import GatewayProcess
from tests.support.waits import hang_guard


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


async def read_response(reader: asyncio.StreamReader) -> tuple[bytes, dict[str, str], bytes]:
    """One HTTP answer read whole: its status line, its headers (lower-case names), its body.

    A connection closed before the answer gives an empty status line (and IncompleteReadError
    if it closed part-way through a body)."""
    status = await reader.readline()
    headers = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return bytes(status), headers, body


async def _request(port: int, connection: tuple[Any, Any]) -> bytes:
    """GET /healthz on an open keep-alive connection; the status line (the answer read whole)."""
    reader, writer = connection
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
    await writer.drain()
    async with hang_guard("the answer to GET /healthz"):
        status, _, _ = await read_response(reader)
    return status


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


async def _served_connection(port: int) -> tuple[Any, Any]:
    """A keep-alive connection that GET /healthz is answered 200 on.

    Tried again while refused: the connection of the readiness probe that waited for the
    gateway process may still count against server.max_connections for a moment.
    """
    async with hang_guard("a connection the gateway serves"):
        while True:
            connection = await asyncio.open_connection("127.0.0.1", port)
            if await _request(port, connection) == b"HTTP/1.1 200 OK\r\n":
                return connection
            connection[1].close()


async def test_connections_over_max_connections_are_answered_503_on_uvloop(
    tmp_path: Path,
) -> None:
    """The same under `python -m gateway`, which runs on uvloop (its transports are not
    asyncio's classes): the third connection gets the 503, and nothing is logged about it."""
    process = GatewayProcess("", tmp_path, settings={"TASK_GATEWAY__SERVER__MAX_CONNECTIONS": "2"})
    await process.start()
    try:
        port = process.addresses.http_port
        first = await _served_connection(port)
        second = await _served_connection(port)

        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        async with hang_guard("the answer to a connection over server.max_connections"):
            refused = await reader.read()

        assert refused.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
        assert b"server.max_connections" in refused
        for _, open_writer in (first, second, (reader, writer)):
            open_writer.close()
    finally:
        await process.stop()
    assert "Traceback" not in process.output()


# A task whose body is announced but, in the tests below, never all sent.
_STALLED_HEAD = (
    b"POST /api/v1/images/generate HTTP/1.1\r\nHost: t\r\n"
    b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
)


async def test_a_body_not_sent_within_the_keepalive_timeout_is_answered_408(
    start_gateway: Any,
) -> None:
    """A request whose body has not all arrived server.keepalive_timeout_seconds after its
    headers is answered 408, Connection: close, with a Status JSON saying so."""
    broker = memory_broker()
    settings = replace_settings(make_settings(), "server", keepalive_timeout_seconds=0.3)
    running = await start_gateway(settings, broker)
    reader, writer = await asyncio.open_connection("127.0.0.1", running.gateway.http_port)

    writer.write(_STALLED_HEAD + b'{"user_id": "u1", ')  # and nothing more
    async with hang_guard("the answer to a request whose body stalled"):
        status, headers, body = await read_response(reader)

    assert status == b"HTTP/1.1 408 Request Timeout\r\n"
    assert headers["connection"] == "close"
    answer = json.loads(body)
    assert answer["code"] == 4  # DEADLINE_EXCEEDED
    assert "body" in answer["message"]
    assert "server.keepalive_timeout_seconds" in answer["message"]
    assert all(not broker.messages(queue) for queue in broker.queues)
    writer.close()


async def test_a_body_trickled_byte_by_byte_is_cut_off_too(start_gateway: Any) -> None:
    """The bound is on the whole body, not on the wait for each piece of it: a client that
    sends a byte every so often still gets its 408."""
    settings = replace_settings(make_settings(), "server", keepalive_timeout_seconds=0.3)
    running = await start_gateway(settings)
    reader, writer = await asyncio.open_connection("127.0.0.1", running.gateway.http_port)
    writer.write(_STALLED_HEAD)

    async def trickle() -> None:
        while True:
            writer.write(b" ")
            await asyncio.sleep(0.05)

    trickling = asyncio.ensure_future(trickle())
    try:
        async with hang_guard("the answer to a request whose body trickles in"):
            status, _, _ = await read_response(reader)
    finally:
        trickling.cancel()

    assert status == b"HTTP/1.1 408 Request Timeout\r\n"
    writer.close()


async def test_headers_trickled_in_are_cut_off_by_the_keepalive_timeout(
    start_gateway: Any,
) -> None:
    """A client that never finishes its headers is disconnected after
    server.keepalive_timeout_seconds (aiohttp's keep-alive timer runs until a request's headers
    are complete), however often it sends another header line."""
    settings = replace_settings(make_settings(), "server", keepalive_timeout_seconds=0.3)
    running = await start_gateway(settings)
    reader, writer = await asyncio.open_connection("127.0.0.1", running.gateway.http_port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")

    async def trickle() -> None:
        for count in range(10_000):
            writer.write(b"X-Slow-%d: 1\r\n" % (count % 100))
            await asyncio.sleep(0.05)

    trickling = asyncio.ensure_future(trickle())
    try:
        async with hang_guard("the server closing a connection whose headers never end"):
            closed = await reader.read()
    finally:
        trickling.cancel()

    assert closed == b""
    writer.close()


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


async def test_the_admin_listener_closes_idle_connections_too(start_gateway: Any) -> None:
    """admin.address takes server.keepalive_timeout_seconds as well (not aiohttp's default of
    an hour): a connection that never finishes a request is closed after it."""
    settings = replace_settings(make_settings(), "server", keepalive_timeout_seconds=0.2)
    settings = replace_settings(settings, "admin", address="127.0.0.1:0")
    running = await start_gateway(settings)
    reader, writer = await asyncio.open_connection("127.0.0.1", running.gateway.admin_port)
    writer.write(b"GET /healthz HTTP/1.1\r\n")  # and never the rest of it

    async with hang_guard("the admin listener closing an idle connection"):
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
