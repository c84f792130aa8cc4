"""However hostile the request, its error is INVALID_ARGUMENT of a bounded size, on both
transports and in the log; on the in-memory broker.

grpc carries the status in the trailers, and a client refuses trailers over 8 KB: an error that
echoed every unknown key, or a 4 KB task type, reached the client as RESOURCE_EXHAUSTED
"received metadata size exceeds limit" instead of the error.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import grpc
import pytest
import structlog.testing
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from taskgateway_api.taskgateway.v1 import gateway_pb2, gateway_pb2_grpc

from tests.conftest import make_settings, memory_broker, url

PAYLOAD = {"model": "m", "prompt": "p", "image_name": "n"}
# A rejection's answer stays well under grpc's 8 KB limit on the trailers a client takes.
ANSWER_BUDGET = 4096


def _violations(error: grpc.aio.AioRpcError) -> list[error_details_pb2.BadRequest.FieldViolation]:
    status = rpc_status.from_call(error)
    assert status is not None
    (detail,) = status.details
    bad_request = error_details_pb2.BadRequest()
    assert detail.Unpack(bad_request)
    return list(bad_request.field_violations)


async def _grpc_rejection(running: Any, request: gateway_pb2.PublishRequest) -> Any:
    stub = gateway_pb2_grpc.TaskGatewayServiceStub(running.channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Publish(request, timeout=10)
    return caught.value


async def test_a_thousand_unknown_payload_keys_are_invalid_argument_over_grpc(
    start_gateway: Any,
) -> None:
    broker = memory_broker()
    running = await start_gateway(make_settings(), broker)
    payload = struct_pb2.Struct()
    payload.update({**PAYLOAD, **{f"key{i}": 1 for i in range(1000)}})

    error = await _grpc_rejection(
        running,
        gateway_pb2.PublishRequest(user_id="u", task_type="images.generate", payload=payload),
    )

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = _violations(error)
    assert all(v.field.startswith("payload.key") for v in violations[:20])  # a Struct's order
    assert len(violations) == 21
    assert violations[-1].field == "…"
    assert broker.messages("images.queue") == []


async def test_a_4_kb_task_type_is_invalid_argument_over_grpc(start_gateway: Any) -> None:
    """The error quotes the start of the task type and still lists the known ones."""
    running = await start_gateway(make_settings())

    error = await _grpc_rejection(
        running, gateway_pb2.PublishRequest(user_id="u", task_type="x" * 4096)
    )

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'xxx" in error.details()
    assert "images.generate" in error.details()
    (violation,) = _violations(error)
    assert violation.field == "task_type"
    assert len(violation.description) < 512


async def test_a_body_of_unknown_keys_gets_a_small_answer_over_rest(
    start_gateway: Any, http: aiohttp.ClientSession
) -> None:
    """A body of 60,000 unknown payload keys: 400, with an answer of a few KB."""
    broker = memory_broker()
    running = await start_gateway(make_settings(), broker)
    payload = {**PAYLOAD, **{f"k{i:06}": 1 for i in range(60_000)}}
    body = {"user_id": "u", "task_type": "images.generate", "payload": payload}

    async with http.post(url(running, "/api/v1/broker/publish"), json=body) as response:
        status, raw = response.status, await response.read()

    assert status == 400
    assert len(raw) < ANSWER_BUDGET
    answer = json.loads(raw)
    assert answer["code"] == 3
    violations = answer["details"][0]["field_violations"]
    assert all(v["field"].startswith("payload.k0") for v in violations[:20])  # a Struct's order
    assert len(violations) == 21
    assert broker.messages("images.queue") == []


async def test_a_huge_task_type_is_cut_in_the_answer_and_in_the_log(
    start_gateway: Any, http: aiohttp.ClientSession
) -> None:
    """A 900 KB task type: a small 400, and the log line's error= is small too."""
    running = await start_gateway(make_settings())
    body = {"user_id": "u", "task_type": "y" * 900_000}

    with structlog.testing.capture_logs() as logs:
        async with http.post(url(running, "/api/v1/broker/publish"), json=body) as response:
            status, raw = response.status, await response.read()

    assert status == 400
    assert len(raw) < ANSWER_BUDGET
    assert "images.generate" in json.loads(raw)["message"]
    (outcome,) = [e for e in logs if e["event"] == "task not published"]
    assert outcome["code"] == "INVALID_ARGUMENT"
    assert "'yyy" in outcome["error"]
    assert len(outcome["error"]) < 1024
