"""The REST shim's answers on the in-memory broker or one the test controls: the error table
over HTTP (400, 404, 405, 413, 415, 429, 500, 503, 504), the catalog and the schemas."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from typing import Any

import aiohttp
import pytest
import structlog.testing
from google.protobuf import json_format
from taskgateway_api.taskgateway.v1 import gateway_pb2, gateway_pb2_grpc

from tests.conftest import make_settings, memory_broker, replace_settings, url
from tests.integration.test_publish import LEGACY_EXAMPLE
from tests.service.test_bounds import read_response
from tests.service.test_grpc_service import HeldBroker
from tests.service.test_metrics import value
from tests.support.waits import hang_guard

TASK = {"user_id": "u1", "payload": {"model": "m", "prompt": "p", "image_name": "n"}}


async def _post(http: aiohttp.ClientSession, running: Any, **kwargs: Any) -> tuple[int, Any]:
    async with http.post(url(running, "/api/v1/images/generate"), json=TASK, **kwargs) as response:
        return response.status, await response.json()


async def test_in_flight_cap_is_429(start_gateway: Any, http: aiohttp.ClientSession) -> None:
    """Past broker.max_in_flight, a REST request is 429 with code RESOURCE_EXHAUSTED."""
    broker = HeldBroker()
    running = await start_gateway(
        replace_settings(make_settings(), "broker", max_in_flight=1), broker
    )
    first = asyncio.ensure_future(_post(http, running))
    await broker.until_arrived()

    status, answer = await _post(http, running)
    broker.release.set()

    assert (status, answer["code"]) == (429, 8)
    assert "broker.max_in_flight" in answer["message"]
    assert (await first)[0] == 200


async def test_grpc_timeout_header_bounds_the_publish(
    start_gateway: Any, http: aiohttp.ClientSession
) -> None:
    """With Grpc-Timeout: 100m and no confirm in time, the answer is 504, outcome unknown."""
    broker = HeldBroker()
    running = await start_gateway(make_settings(), broker)

    status, answer = await _post(http, running, headers={"Grpc-Timeout": "100m"})

    assert (status, answer["code"]) == (504, 4)
    assert "within 0.1s" in answer["message"]
    assert "idempotency_key" in answer["message"]
    broker.release.set()
    assert await running.gateway.ingestor.drain(5) == 0
    assert len(broker.published) == 1, "the publish went on in the background"


async def test_unexpected_error_is_500_without_internals(
    start_gateway: Any, http: aiohttp.ClientSession
) -> None:
    """A bug below the shim answers 500 with code INTERNAL and none of its text."""
    running = await start_gateway(make_settings(), HeldBroker(error=RuntimeError("secret dsn")))

    status, answer = await _post(http, running)

    assert (status, answer["code"]) == (500, 13)
    assert "secret" not in answer["message"]


async def test_shutting_down_is_503_and_not_ready(
    start_gateway: Any, http: aiohttp.ClientSession
) -> None:
    """Once shutdown begins, new tasks are 503 and /readyz says so, while one in flight ends OK."""
    broker = HeldBroker()
    running = await start_gateway(make_settings(), broker)
    in_flight = asyncio.ensure_future(_post(http, running))
    await broker.until_arrived()
    ready_url = f"http://127.0.0.1:{running.gateway.http_port}/readyz"

    await running.gateway.begin_shutdown()  # the first step of Gateway.stop
    status, answer = await _post(http, running)
    async with http.get(ready_url) as response:
        readiness = (response.status, await response.json())
    broker.release.set()

    assert (status, answer["code"]) == (503, 14)
    assert "shutting down" in answer["message"]
    assert readiness == (503, {"status": "not ready", "reason": "shutting down"})
    assert (await in_flight)[0] == 200


BAD_REQUESTS: list[tuple[str, str, str, bytes, dict[str, str], int, int, list[str]]] = [
    # (id, verb, path, body, headers, http status, grpc code, words in the message)
    ("unknown-task-type", "POST", "/api/v1/broker/publish",
     json.dumps({**LEGACY_EXAMPLE, "task_type": "images.upscale"}).encode(), {}, 400, 3,
     ["images.upscale", "images.generate"]),
    ("bad-user-id", "POST", "/api/v1/broker/publish",
     json.dumps({**LEGACY_EXAMPLE, "user_id": "a:b"}).encode(), {}, 400, 3, ["user_id", "':'"]),
    ("unknown-field", "POST", "/api/v1/broker/publish",
     json.dumps({**LEGACY_EXAMPLE, "priority": 1}).encode(), {}, 400, 3, ["priority"]),
    ("wrong-type", "POST", "/api/v1/images/generate",
     json.dumps({"user_id": "1", "payload": {"width": "wide"}}).encode(), {}, 400, 3,
     ["payload.width"]),
    ("malformed-json", "POST", "/api/v1/broker/publish", b'{"user_id": "1",\n "task_type": }',
     {}, 400, 3, ["line 2 column 15"]),
    ("not-an-object", "POST", "/api/v1/broker/publish", b"[1, 2]", {}, 400, 3, ["JSON object"]),
    ("duplicate-key", "POST", "/api/v1/broker/publish", b'{"user_id": "1", "user_id": "2"}',
     {}, 400, 3, ["duplicate key 'user_id'"]),
    ("bad-grpc-timeout", "POST", "/api/v1/broker/publish", json.dumps(LEGACY_EXAMPLE).encode(),
     {"Grpc-Timeout": "soon"}, 400, 3, ["Grpc-Timeout"]),
    ("oversized", "POST", "/api/v1/broker/publish",
     json.dumps({**LEGACY_EXAMPLE, "user_id": "x" * 5000}).encode(), {}, 413, 8, ["4096"]),
    ("not-json", "POST", "/api/v1/broker/publish", b"user_id=1",
     {"Content-Type": "application/x-www-form-urlencoded"}, 415, 3, ["application/json"]),
    ("wrong-method", "GET", "/api/v1/broker/publish", b"", {}, 405, 12, ["POST"]),
    ("unknown-path", "POST", "/api/v1/broker/publish-all", b"{}", {}, 404, 5,
     ["/api/v1/broker/publish-all"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("verb", "path", "body", "headers", "status", "code", "words"),
    [pytest.param(*case[1:], id=case[0]) for case in BAD_REQUESTS],
)
async def test_bad_rest_request_gets_its_status_and_publishes_nothing(
    start_gateway: Any,
    http: aiohttp.ClientSession,
    verb: str,
    path: str,
    body: bytes,
    headers: dict[str, str],
    status: int,
    code: int,
    words: list[str],
) -> None:
    """Each bad request gets its HTTP status and google.rpc.Status body; nothing is queued."""
    broker = memory_broker()
    settings = replace_settings(make_settings(), "grpc", max_request_bytes=4096)
    running = await start_gateway(settings, broker)

    async with http.request(
        verb, url(running, path), data=body, headers={"Content-Type": "application/json", **headers}
    ) as response:
        answer = await response.json()

    assert response.status == status
    assert answer["code"] == code
    for word in words:
        assert word in answer["message"]
    assert isinstance(answer["details"], list)
    assert all(not broker.messages(queue) for queue in broker.queues)


async def test_field_errors_carry_bad_request_details(
    start_gateway: Any, http: aiohttp.ClientSession
) -> None:
    """A field error's Status JSON has a google.rpc.BadRequest naming each field."""
    gateway = await start_gateway(make_settings())
    request = {"user_id": "", "payload": {"model": "m"}}
    async with http.post(url(gateway, "/api/v1/images/generate"), json=request) as response:
        answer = await response.json()

    assert response.status == 400
    (detail,) = answer["details"]
    assert detail["@type"] == "type.googleapis.com/google.rpc.BadRequest"
    assert [v["field"] for v in detail["field_violations"]] == [
        "user_id",
        "payload.prompt",
        "payload.image_name",
    ]


async def test_task_catalog_over_rest_and_grpc(
    start_gateway: Any, http: aiohttp.ClientSession
) -> None:
    """The catalog lists every task type with its route, the same over REST and gRPC."""
    gateway = await start_gateway(make_settings())
    async with http.get(url(gateway, "/api/v1/task-types")) as response:
        rest = await response.json()
    grpc_answer = await gateway_pb2_grpc.TaskGatewayServiceStub(gateway.channel).ListTaskTypes(
        gateway_pb2.ListTaskTypesRequest()
    )

    assert rest == json_format.MessageToDict(grpc_answer, preserving_proto_field_name=True)
    by_type = {entry["task_type"]: entry for entry in rest["task_types"]}
    assert sorted(by_type) == [
        "images.edit",
        "images.generate",
        "videos.animate",
        "videos.generate",
    ]
    assert by_type["images.generate"] == {
        "task_type": "images.generate",
        "exchange": "images.tasks",
        "routing_key": "images.generate",
        "service_name": "image-generation",
        "rpc": "images.v1.ImagesService/Generate",
    }


async def test_payload_schema_over_rest_describes_the_payload(
    start_gateway: Any, http: aiohttp.ClientSession
) -> None:
    """GET .../images.generate/schema gives the payload's JSON Schema; unknown types are 404."""
    gateway = await start_gateway(make_settings())
    async with http.get(url(gateway, "/api/v1/task-types/images.generate/schema")) as response:
        answer = await response.json()
    async with http.get(url(gateway, "/api/v1/task-types/images.nope/schema")) as missing:
        missing_answer = await missing.json()

    assert response.status == 200
    schema = answer["json_schema"]
    assert set(schema["required"]) == {"model", "prompt", "image_name"}
    assert schema["properties"]["width"]["minimum"] == 64
    assert schema["properties"]["model"]["maxLength"] == 256
    assert (missing.status, missing_answer["code"]) == (404, 5)
    assert "images.generate" in missing_answer["message"]


def _head(length: int, *headers: bytes) -> bytes:
    """The request line and headers of a POST of a task whose body is `length` bytes."""
    return b"".join(
        [
            b"POST /api/v1/images/generate HTTP/1.1\r\nHost: t\r\n",
            b"Content-Type: application/json\r\nContent-Length: %d\r\n" % length,
            *(header + b"\r\n" for header in headers),
            b"\r\n",
        ]
    )


async def _status_and_json(reader: asyncio.StreamReader) -> tuple[int, Any]:
    """The HTTP status and the JSON body of the answer on a raw connection."""
    status, _, body = await read_response(reader)
    return int(status.split()[1]), json.loads(body)


def _request_count(status: int) -> float:
    return value(
        "http_server_request_duration_seconds_count",
        http_request_method="POST",
        http_route="/api/v1/images/generate",
        http_response_status_code=str(status),
    )


@pytest.mark.parametrize("hang_up", ["close", "reset"])
async def test_a_client_gone_mid_body_is_499_not_an_error(start_gateway: Any, hang_up: str) -> None:
    """A client that closes (FIN) or resets (RST) its connection part-way through the body:
    one info line, no traceback, counted as 499 (client closed request), nothing published."""
    broker = memory_broker()
    running = await start_gateway(make_settings(), broker)
    before = {status: _request_count(status) for status in (499, 500)}
    reader, writer = await asyncio.open_connection("127.0.0.1", running.gateway.http_port)
    logged = asyncio.Event()

    def watch(_: object, __: str, event: dict[str, Any]) -> dict[str, Any]:
        logged.set()
        return event

    with structlog.testing.capture_logs(processors=[watch]) as logs:
        # Expect: 100-continue: the shim says "100 Continue" as it starts on the request, so
        # the hang-up below comes while it reads the body, not before it saw the request.
        writer.write(_head(1000, b"Expect: 100-continue"))
        async with hang_guard("100 Continue"):
            assert await reader.readline() == b"HTTP/1.1 100 Continue\r\n"
        writer.write(b'{"user_id": "u1", ')
        await writer.drain()
        if hang_up == "reset":  # SO_LINGER 0: close() sends RST
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()
        # Measured as the shim answers, right after the line it logs (nothing awaited between).
        async with hang_guard("the shim logging the request"):
            await logged.wait()

    assert [(entry["event"], entry["log_level"]) for entry in logs] == [
        ("http request rejected", "info")
    ]
    (entry,) = logs
    assert entry["code"] == "CANCELLED"
    assert "exc_info" not in entry
    assert _request_count(499) - before[499] == 1
    assert _request_count(500) == before[500]
    assert all(not broker.messages(queue) for queue in broker.queues)


async def test_grpc_timeout_counts_from_the_arrival_of_the_request(start_gateway: Any) -> None:
    """Grpc-Timeout runs from when the request's headers arrived, as a gRPC deadline runs from
    the call's start: a body sent after the deadline passed is not published (504)."""
    broker = memory_broker()
    running = await start_gateway(make_settings(), broker)
    body = json.dumps(TASK).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", running.gateway.http_port)

    writer.write(_head(len(body), b"Grpc-Timeout: 100m"))
    await asyncio.sleep(0.5)  # not an assertion on time: the deadline passes meanwhile
    writer.write(body)
    async with hang_guard("the answer to a task sent after its deadline"):
        status, answer = await _status_and_json(reader)

    assert (status, answer.get("code")) == (504, 4), answer
    assert "deadline passed before the task could be sent" in answer["message"]
    assert all(not broker.messages(queue) for queue in broker.queues)
    writer.close()
