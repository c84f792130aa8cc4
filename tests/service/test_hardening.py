"""What no client may do to a worker or learn from it: huge batches, bugs, dead deadlines,
arbitrary trace headers. On the in-memory broker, over both transports."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc
import pytest
import structlog.testing
from google.protobuf.message import Message
from grpc_status import rpc_status
from taskgateway_api.images.v1 import images_pb2, images_pb2_grpc
from taskgateway_api.taskgateway.v1 import gateway_pb2, gateway_pb2_grpc

import gateway.app.server
import gateway.core.methods
from gateway.core.context import CallContext
from gateway.core.method import Method, StreamHandler, UnaryHandler
from gateway.core.middleware import Middleware, add_call_fields
from tests.conftest import make_settings, memory_broker, replace_settings, url

PAYLOAD = {"model": "m", "prompt": "p", "image_name": "n"}
GENERATE = images_pb2.GenerateRequest(user_id="u1", payload=images_pb2.GeneratePayload(**PAYLOAD))
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def typed_entry() -> gateway_pb2.TaskEntry:
    entry = gateway_pb2.TaskEntry()
    entry.typed.Pack(GENERATE)
    return entry


# --- 1. a batch is bounded, and yields while it works ---------------------------------------


async def test_a_batch_over_the_cap_is_refused_whole_over_grpc(start_gateway: Any) -> None:
    """One entry over grpc.max_batch_entries is INVALID_ARGUMENT naming `entries`; none lands."""
    broker = memory_broker()
    settings = replace_settings(make_settings(), "grpc", max_batch_entries=10)
    running = await start_gateway(settings, broker)
    stub = gateway_pb2_grpc.TaskGatewayServiceStub(running.channel)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.PublishBatch(
            gateway_pb2.PublishBatchRequest(entries=[typed_entry()] * 11), timeout=10
        )
    allowed = await stub.PublishBatch(
        gateway_pb2.PublishBatchRequest(entries=[typed_entry()] * 10), timeout=10
    )

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 10 items per request, got 11" in caught.value.details()
    status = rpc_status.from_call(caught.value)
    assert status is not None
    assert "entries" in str(status.details[0].value)
    assert [bool(r.task_key) for r in allowed.results] == [True] * 10
    assert len(broker.messages("images.queue")) == 10, "only the allowed batch landed"


async def test_a_batch_over_the_cap_is_refused_whole_over_rest(
    start_gateway: Any, http: aiohttp.ClientSession
) -> None:
    """Over REST the same batch is 400 with a violation on `entries`, and nothing lands."""
    broker = memory_broker()
    settings = replace_settings(make_settings(), "grpc", max_batch_entries=10)
    running = await start_gateway(settings, broker)
    entry = {"publish": {"user_id": "u1", "task_type": "images.generate", "payload": PAYLOAD}}

    async with http.post(
        url(running, "/api/v1/broker/publish-batch"), json={"entries": [entry] * 11}
    ) as response:
        status, answer = response.status, await response.json()

    assert status == 400
    assert answer["code"] == 3
    assert answer["details"][0]["field_violations"][0]["field"] == "entries"
    assert broker.messages("images.queue") == []


async def test_the_cap_is_in_the_openapi_document(
    start_gateway: Any, http: aiohttp.ClientSession
) -> None:
    """/openapi.json gives the batch's entries the configured maxItems."""
    settings = replace_settings(make_settings(), "grpc", max_batch_entries=123)
    running = await start_gateway(settings)

    async with http.get(url(running, "/openapi.json")) as response:
        document = await response.json()

    batch = document["components"]["schemas"]["taskgateway.v1.PublishBatchRequest"]
    assert batch["properties"]["entries"]["maxItems"] == 123


class Working(Middleware):
    """Marks the span in which a unary method's handler runs, so turns are counted in it only."""

    def __init__(self) -> None:
        self.running = False

    def unary(self, method: Method, handler: UnaryHandler) -> UnaryHandler:
        async def marked(request: Any, call: CallContext) -> Message:
            self.running = True
            try:
                return await handler(request, call)
            finally:
                self.running = False

        return marked

    def stream(self, method: Method, handler: StreamHandler) -> StreamHandler:
        return handler


async def test_a_batch_lets_the_event_loop_run_between_its_entries(
    start_gateway: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Entries that settle at once still give the loop a turn at every time slice."""
    monkeypatch.setattr(gateway.core.methods, "_TIME_SLICE_SECONDS", 0.0)  # a slice per entry
    working = Working()
    built_in = gateway.app.server.middlewares
    monkeypatch.setattr(
        gateway.app.server,
        "middlewares",
        lambda settings, tracer=None, **hooks: [*built_in(settings), working],
    )
    running = await start_gateway(make_settings())
    stub = gateway_pb2_grpc.TaskGatewayServiceStub(running.channel)
    invalid = gateway_pb2.TaskEntry()  # neither publish nor typed: settles at once
    turns = 0

    async def count_turns() -> None:
        # Only turns taken while the batch's handler runs count: the RPC around it (gRPC's
        # reading and writing) gives the loop turns of its own, whether the batch yields or not.
        nonlocal turns
        while True:
            turns += working.running
            await asyncio.sleep(0)

    counter = asyncio.create_task(count_turns())
    answer = await stub.PublishBatch(
        gateway_pb2.PublishBatchRequest(entries=[invalid] * 400), timeout=10
    )
    counter.cancel()

    assert len(answer.results) == 400
    # A slice per entry is a turn per entry (400); without slices the batch takes none.
    assert turns >= 200, f"other tasks got {turns} turns while the batch worked"


# --- 2. a bug is INTERNAL, with nothing of it in the answer ---------------------------------


class Broken(Middleware):
    """A middleware with a bug: every call raises an exception with internals in its text."""

    def unary(self, method: Method, handler: UnaryHandler) -> UnaryHandler:
        async def broken(request: Any, call: CallContext) -> Message:
            raise KeyError("secret-internal-detail")

        return broken

    def stream(self, method: Method, handler: StreamHandler) -> StreamHandler:
        async def broken(requests: AsyncIterator[Any], call: CallContext) -> AsyncIterator[Any]:
            raise KeyError("secret-internal-detail")
            yield  # pragma: no cover - an async generator that fails at once

        return broken


@pytest.fixture
def broken(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        gateway.app.server, "middlewares", lambda settings, tracer=None, **hooks: [Broken()]
    )


@pytest.mark.usefixtures("broken")
async def test_a_bug_in_a_unary_method_is_internal_without_its_text(start_gateway: Any) -> None:
    """gRPC answers INTERNAL with a fixed message; the traceback goes to the log."""
    running = await start_gateway(make_settings())

    with structlog.testing.capture_logs() as logs, pytest.raises(grpc.aio.AioRpcError) as caught:
        await images_pb2_grpc.ImagesServiceStub(running.channel).Generate(GENERATE, timeout=10)

    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert caught.value.details() == "internal error; see the gateway's log"
    assert "secret" not in str(caught.value.trailing_metadata())
    (logged,) = [line for line in logs if line["event"] == "unexpected error in a method"]
    assert logged["log_level"] == "error"
    assert logged["exc_info"] is True


@pytest.mark.usefixtures("broken")
async def test_a_bug_in_a_streaming_method_is_internal_without_its_text(
    start_gateway: Any,
) -> None:
    """A stream ends INTERNAL with a fixed message, not UNKNOWN with the exception's text."""
    running = await start_gateway(make_settings())
    stub = gateway_pb2_grpc.TaskGatewayServiceStub(running.channel)
    request = gateway_pb2.PublishStreamRequest(entry=typed_entry())

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in stub.PublishStream(iter([request]), timeout=10):
            pass

    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in caught.value.details()
    assert "KeyError" not in caught.value.details()


@pytest.mark.usefixtures("broken")
async def test_a_bug_over_rest_is_a_detail_free_500(
    start_gateway: Any, http: aiohttp.ClientSession
) -> None:
    """The shim answers the same bug 500 with code INTERNAL and no internals."""
    running = await start_gateway(make_settings())

    async with http.post(
        url(running, "/api/v1/images/generate"), json={"user_id": "u1", "payload": PAYLOAD}
    ) as response:
        status, body = response.status, await response.text()

    assert status == 500
    assert "secret" not in body
    assert '"code": 13' in body


# --- 6. a call past its deadline publishes nothing ------------------------------------------


async def test_a_call_already_past_its_deadline_is_refused_over_rest(
    start_gateway: Any, http: aiohttp.ClientSession
) -> None:
    """Grpc-Timeout: 1n is 504 saying nothing was published, and nothing lands."""
    broker = memory_broker()
    running = await start_gateway(make_settings(), broker)

    async with http.post(
        url(running, "/api/v1/images/generate"),
        json={"user_id": "u1", "payload": PAYLOAD},
        headers={"Grpc-Timeout": "1n"},
    ) as response:
        status, answer = response.status, await response.json()

    assert status == 504
    assert "nothing was published" in answer["message"]
    assert broker.messages("images.queue") == []


# --- 7. only a well-formed trace context is forwarded; request ids are bounded --------------


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        (
            {"traceparent": TRACEPARENT, "tracestate": "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"},
            {"traceparent": TRACEPARENT, "tracestate": "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"},
        ),
        ({"traceparent": TRACEPARENT, "tracestate": "not a list"}, {"traceparent": TRACEPARENT}),
        ({"traceparent": "00-" + "a" * 4000}, {}),
        ({"traceparent": TRACEPARENT.upper()}, {}),
        ({"traceparent": "00-" + "0" * 32 + "-00f067aa0ba902b7-01"}, {}),
        ({"tracestate": "congo=t61rcWkgMzE"}, {}),
    ],
)
async def test_only_a_well_formed_trace_context_reaches_the_message(
    start_gateway: Any, metadata: dict[str, str], expected: dict[str, str]
) -> None:
    """A malformed traceparent is dropped with its tracestate; a malformed tracestate alone."""
    broker = memory_broker()
    running = await start_gateway(make_settings(), broker)

    answer = await images_pb2_grpc.ImagesServiceStub(running.channel).Generate(
        GENERATE, metadata=tuple(metadata.items()), timeout=10
    )

    (message,) = broker.messages("images.queue")
    assert dict(message.headers) == {"task_key": answer.task_key, **expected}


async def test_a_long_request_id_is_logged_cut_short(
    start_gateway: Any, http: aiohttp.ClientSession
) -> None:
    """An X-Request-Id of 8 KB is logged as its first 128 characters, on every line."""
    running = await start_gateway(make_settings())
    request_id = "r" * 8000

    with structlog.testing.capture_logs(
        [structlog.contextvars.merge_contextvars, add_call_fields]
    ) as logs:
        await images_pb2_grpc.ImagesServiceStub(running.channel).Generate(
            GENERATE, metadata=(("x-request-id", request_id),), timeout=10
        )
        async with http.post(
            url(running, "/api/v1/images/generate"),
            json={"user_id": "u1"},  # rejected by the method: logged with the call's context
            headers={"X-Request-Id": request_id},
        ):
            pass
        async with http.get(url(running, "/nowhere"), headers={"X-Request-Id": request_id}):
            pass

    logged = [(line["event"], line["request_id"]) for line in logs if "request_id" in line]
    assert [event for event, _ in logged] == [
        "message queued (in-memory broker)",
        "task published",
        "task not published",
        "http request rejected",
    ]
    assert {request_id for _, request_id in logged} == {"r" * 128}


# --- 10. a start-up that fails leaves nothing running ---------------------------------------


async def test_a_failed_start_stops_what_had_started() -> None:
    """With the HTTP port taken, start() fails and the gRPC port and the broker are released."""
    from gateway.app.server import Gateway
    from gateway.errors import ConfigError
    from tests.support.ports import accepts

    taken = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    http_port = taken.sockets[0].getsockname()[1]
    broker = memory_broker()
    settings = replace_settings(make_settings(), "server", address=f"127.0.0.1:{http_port}")
    gateway = Gateway(settings, broker)
    try:
        with pytest.raises(ConfigError, match=r"server\.address"):
            await gateway.start()

        assert gateway.grpc_port is not None
        assert not accepts(gateway.grpc_port, "127.0.0.1", timeout=1)
        assert not broker.connected
    finally:
        taken.close()
