"""Fuzzing both transports: hostile input is a 4xx / INVALID_ARGUMENT-class answer or a
success, never a 5xx / INTERNAL, never a crash, and nothing is published for a rejection."""

from __future__ import annotations

import http.client
import json
import os
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from taskgateway_api.images.v1 import images_pb2
from taskgateway_api.taskgateway.v1 import gateway_pb2

from tests.fuzz.conftest import FuzzTarget

# FUZZ_EXAMPLES=5000 for a longer hunt by hand; CI's run stays at a few seconds.
FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# Answers a client may get for input it made up; anything else is a gateway fault.
REST_ACCEPTABLE = {200, 400, 404, 405, 413, 415}
GRPC_ACCEPTABLE = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED,  # over the request size limit
}
METHODS = [
    "/taskgateway.v1.TaskGatewayService/Publish",
    "/images.v1.ImagesService/Generate",
    "/images.v1.ImagesService/Edit",
    "/videos.v1.VideosService/Generate",
    "/videos.v1.VideosService/Animate",
    "/taskgateway.v1.TaskGatewayService/GetTaskTypeSchema",
]
VALID_PAYLOAD = {"model": "m", "prompt": "p", "image_name": "n"}

# Text with the characters that break naive code: NUL, controls, ':' , lone surrogates, RTL marks.
hostile_text = st.text(
    alphabet=st.one_of(
        st.characters(codec=None),
        st.sampled_from(["\x00", "\n", ":", "\ud800", "\udfff", "\u202e", "\ufeff", "\x85"]),
    ),
    max_size=300,
)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=False, allow_infinity=False),
    hostile_text,
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5), st.dictionaries(hostile_text, children, max_size=5)
    ),
    max_leaves=30,
)


@pytest.fixture
def grpc_channel(target: FuzzTarget) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(target.grpc_address) as channel:
        yield channel


def _post(
    target: FuzzTarget, path: str, body: bytes, content_type: str = "application/json"
) -> tuple[int, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", target.http_port, timeout=30)
    try:
        connection.request("POST", path, body=body, headers={"Content-Type": content_type})
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        connection.close()


def _check_rest(target: FuzzTarget, path: str, body: bytes) -> None:
    before = target.queued()
    status, answer = _post(target, path, body)
    assert status in REST_ACCEPTABLE, (status, answer)
    if status == 200:
        assert target.queued() == before + 1
        assert answer["task_key"].count(":") == 2
    else:
        assert target.queued() == before, "a rejected request published nothing"
        assert isinstance(answer["code"], int)
        assert answer["code"] != 13
        assert answer["message"]


def _call_raw(channel: grpc.Channel, method: str, raw: bytes) -> grpc.StatusCode:
    call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
    try:
        call(raw, timeout=30)
    except grpc.RpcError as error:
        return error.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


@FUZZ
@given(body=st.binary(max_size=2000))
def test_random_bytes_as_rest_body(target: FuzzTarget, body: bytes) -> None:
    """Random bytes posted as JSON are answered 4xx (or 200 if valid), never 5xx."""
    _check_rest(target, "/api/v1/broker/publish", body)


@FUZZ
@given(
    value=json_values, path=st.sampled_from(["/api/v1/broker/publish", "/api/v1/images/generate"])
)
def test_random_json_as_rest_body(target: FuzzTarget, value: Any, path: str) -> None:
    """Arbitrary JSON documents of any shape and type get a 4xx or a 200, never a 5xx."""
    _check_rest(target, path, json.dumps(value).encode())


@FUZZ
@given(
    user_id=hostile_text,
    key=hostile_text,
    task_type=st.one_of(st.sampled_from(["images.generate", "videos.animate"]), hostile_text),
    payload=st.one_of(st.just(VALID_PAYLOAD), json_values),
)
def test_hostile_fields_in_legacy_request(
    target: FuzzTarget, user_id: str, key: str, task_type: str, payload: Any
) -> None:
    """Hostile user ids, idempotency keys, task types and payloads: 4xx or 200, never 5xx."""
    body = {"user_id": user_id, "task_type": task_type, "payload": payload, "idempotency_key": key}
    _check_rest(target, "/api/v1/broker/publish", json.dumps(body).encode())


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"user_id": ' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_000 + b"}",
        b'{"user_id": "1", "user_id": "2", "task_type": "images.generate"}',
        b'{"user_id": "1", "task_type": "images.generate", "payload": {"width": NaN}}',
        b'{"user_id": "1", "task_type": "images.generate", "payload": {"seed": 1e400}}',
        b'{"user_id": "1", "task_type": "images.generate", "payload": {"seed": -1}}',
        b'{"user_id": "1", "task_type": "images.generate", "payload": {"seed": 1'
        + b"9" * 30
        + b"}}",
        b'{"user_id": "\\ud800", "task_type": "images.generate", "payload": {}}',
        b'{"user_id": "a\\u0000b", "task_type": "images.generate", "payload": {}}',
        b'{"user_id": "1", "task_type": "images.generate", "payload": {"model": "\\udfff"}}',
        b'{"user_id": "1", "task_type": "images.generate", "payload": "not an object"}',
        b'{"user_id": 7, "task_type": ["images.generate"], "payload": []}',
        b'{"user_id": "' + b"x" * 900_000 + b'"}',
        b"\xef\xbb\xbf{}",
        b"\xff\xfe{\x00}\x00",
        b"",
    ],
    ids=lambda body: body[:40].decode("latin-1"),
)
def test_hostile_json_documents(target: FuzzTarget, body: bytes) -> None:
    """Deep nesting, duplicates, NaN, huge numbers, surrogates, NUL, BOMs: 4xx, never 5xx."""
    _check_rest(target, "/api/v1/broker/publish", body)


@FUZZ
@given(raw=st.binary(max_size=2000), method=st.sampled_from(METHODS))
def test_random_bytes_as_protobuf(
    target: FuzzTarget, grpc_channel: grpc.Channel, raw: bytes, method: str
) -> None:
    """Random bytes sent as a request message are INVALID_ARGUMENT (or OK), never INTERNAL."""
    before = target.queued()
    code = _call_raw(grpc_channel, method, raw)
    assert code in GRPC_ACCEPTABLE | {grpc.StatusCode.NOT_FOUND}, code
    if code != grpc.StatusCode.OK:
        assert target.queued() == before


@FUZZ
@given(user_id=hostile_text, key=hostile_text, payload=json_values)
def test_hostile_fields_over_grpc(
    target: FuzzTarget, grpc_channel: grpc.Channel, user_id: str, key: str, payload: Any
) -> None:
    """Hostile strings and Struct payloads over gRPC: INVALID_ARGUMENT or OK, never INTERNAL."""
    try:
        user_id.encode()
        key.encode()
    except UnicodeEncodeError:
        user_id, key = "surrogate", "surrogate"  # protobuf cannot even hold these
    request = gateway_pb2.PublishRequest(
        user_id=user_id, task_type="images.generate", idempotency_key=key
    )
    if isinstance(payload, dict):
        try:
            request.payload.update(payload)
        except (ValueError, TypeError):
            request.payload.update({"model": "unrepresentable"})
    typed = images_pb2.GenerateRequest(
        user_id=user_id, idempotency_key=key, payload=images_pb2.GeneratePayload(**VALID_PAYLOAD)
    )
    for method, message in (
        ("/taskgateway.v1.TaskGatewayService/Publish", request),
        ("/images.v1.ImagesService/Generate", typed),
    ):
        before = target.queued()
        code = _call_raw(grpc_channel, method, message.SerializeToString())
        assert code in GRPC_ACCEPTABLE, code
        assert target.queued() == before + (1 if code == grpc.StatusCode.OK else 0)
