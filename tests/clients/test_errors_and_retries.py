"""What the clients make of the gateway's answers, against a scripted fake gateway: which
errors are retried (and after how long), which exception each code raises, and what every
call carries (the token, TLS with client certificates)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest
import trustme
from task_gateway_client import (
    AsyncTaskGatewayClient,
    OutcomeUnknown,
    PermissionDenied,
    QuotaExceeded,
    RetryPolicy,
    TaskGatewayClient,
    TaskGatewayError,
    TLSConfig,
    Unauthenticated,
)
from task_gateway_client._errors import from_rpc_error
from taskgateway_api.images.v1 import images_pb2
from taskgateway_api.taskgateway.v1 import gateway_pb2

from tests.clients.conftest import generate_request
from tests.clients.servers import (
    Call,
    Context,
    ResettingGateway,
    abort_with_garbled_details,
    abort_with_status,
)

TASK_KEY = "12345:image-generation:0b5f0a4e-6a8e-5d4c-9a4f-3b2e1d0c9b8a"
ANSWER = images_pb2.GenerateResponse(task_key=TASK_KEY).SerializeToString()


def keys_sent(calls: list[Call]) -> list[str]:
    return [images_pb2.GenerateRequest.FromString(c.request).idempotency_key for c in calls]


async def test_resource_exhausted_with_retry_info_is_retried_after_its_delay(
    fake_gateway: Any,
) -> None:
    """RESOURCE_EXHAUSTED with RetryInfo is tried again, no sooner than the delay, same key."""

    async def script(call: Call, context: Context) -> bytes:
        if len(fake.calls) == 1:
            await abort_with_status(
                context, grpc.StatusCode.RESOURCE_EXHAUSTED, "quota", retry_delay=0.3
            )
        return ANSWER

    fake = await fake_gateway(script)
    async with AsyncTaskGatewayClient(fake.address) as client:
        task_key = await client.submit(generate_request())

    first, second = fake.calls
    assert task_key == TASK_KEY
    assert second.at - first.at >= 0.3
    assert len(set(keys_sent(fake.calls))) == 1


async def test_resource_exhausted_without_retry_info_is_not_retried(fake_gateway: Any) -> None:
    """RESOURCE_EXHAUSTED without RetryInfo raises QuotaExceeded after the one attempt."""

    async def script(call: Call, context: Context) -> bytes:
        await abort_with_status(context, grpc.StatusCode.RESOURCE_EXHAUSTED, "in-flight cap")
        return ANSWER

    fake = await fake_gateway(script)
    async with AsyncTaskGatewayClient(fake.address) as client:
        with pytest.raises(QuotaExceeded) as raised:
            await client.submit(generate_request())

    assert len(fake.calls) == 1
    assert raised.value.message == "in-flight cap"
    assert raised.value.retry_delay is None


async def test_a_retry_delay_beyond_the_deadline_is_not_waited_for(fake_gateway: Any) -> None:
    """A RetryInfo delay longer than the deadline leaves raises QuotaExceeded with that delay."""

    async def script(call: Call, context: Context) -> bytes:
        await abort_with_status(
            context, grpc.StatusCode.RESOURCE_EXHAUSTED, "quota", retry_delay=60
        )
        return ANSWER

    fake = await fake_gateway(script)
    async with AsyncTaskGatewayClient(fake.address, deadline=5) as client:
        with pytest.raises(QuotaExceeded) as raised:
            await client.submit(generate_request())

    assert len(fake.calls) == 1
    assert raised.value.retry_delay == 60


@pytest.mark.parametrize(
    ("code", "exception"),
    [
        (grpc.StatusCode.PERMISSION_DENIED, PermissionDenied),
        (grpc.StatusCode.UNAUTHENTICATED, Unauthenticated),
        (grpc.StatusCode.FAILED_PRECONDITION, TaskGatewayError),
    ],
)
async def test_each_refusal_raises_its_exception_after_one_attempt(
    fake_gateway: Any, code: grpc.StatusCode, exception: type[TaskGatewayError]
) -> None:
    """A refusal is not retried and raises the exception of its code, with code and message."""

    async def script(call: Call, context: Context) -> bytes:
        await abort_with_status(context, code, f"refused: {code.name}")
        return ANSWER

    fake = await fake_gateway(script)

    def submit() -> None:
        with TaskGatewayClient(fake.address) as client:
            client.submit(generate_request())

    with pytest.raises(TaskGatewayError) as raised:
        await asyncio.to_thread(submit)

    assert type(raised.value) is exception
    assert (raised.value.code, raised.value.message) == (code, f"refused: {code.name}")
    assert len(fake.calls) == 1


async def test_unavailable_is_retried_with_the_same_key_until_answered(fake_gateway: Any) -> None:
    """UNAVAILABLE twice, then an answer: three attempts, one idempotency key, the key returned."""

    async def script(call: Call, context: Context) -> bytes:
        if len(fake.calls) < 3:
            await abort_with_status(context, grpc.StatusCode.UNAVAILABLE, "broker away")
        return gateway_pb2.PublishResponse(task_key=TASK_KEY).SerializeToString()

    fake = await fake_gateway(script)
    retry = RetryPolicy(initial_backoff=0.01, max_backoff=0.02)
    async with AsyncTaskGatewayClient(fake.address, retry=retry) as client:
        task_key = await client.publish("images.generate", "12345", {"model": "m"})

    sent = [gateway_pb2.PublishRequest.FromString(c.request) for c in fake.calls]
    assert task_key == TASK_KEY
    assert len({request.idempotency_key for request in sent}) == 1
    assert len(sent) == 3


async def test_every_call_carries_the_bearer_token(fake_gateway: Any) -> None:
    """The token goes out as `authorization: Bearer <token>` metadata."""

    async def script(call: Call, context: Context) -> bytes:
        return ANSWER

    fake = await fake_gateway(script)
    async with AsyncTaskGatewayClient(fake.address, token="s3cret-token") as client:
        await client.submit(generate_request())

    assert fake.calls[0].metadata["authorization"] == "Bearer s3cret-token"


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """PEM files of a CA, a server certificate for gateway.test and a client certificate
    (made by trustme, so no openssl is needed and the test cannot be skipped for want of it)."""
    where = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(where / "ca.pem"))
    for name, issued in [
        ("server", ca.issue_cert("gateway.test")),
        ("client", ca.issue_cert(common_name="client")),
    ]:
        issued.cert_chain_pems[0].write_to_path(str(where / f"{name}.pem"))
        issued.private_key_pem.write_to_path(str(where / f"{name}.key"))
    return where


async def test_mutual_tls_with_pem_bytes_and_paths(fake_gateway: Any, certificates: Path) -> None:
    """Over mutual TLS the call goes through, and the server sees the client's certificate."""
    seen_identity: list[bytes] = []

    async def script(call: Call, context: Context) -> bytes:
        seen_identity.extend(context.peer_identities() or [])
        return ANSWER

    server_credentials = grpc.ssl_server_credentials(
        [((certificates / "server.key").read_bytes(), (certificates / "server.pem").read_bytes())],
        root_certificates=(certificates / "ca.pem").read_bytes(),
        require_client_auth=True,
    )
    fake = await fake_gateway(script, credentials=server_credentials)
    tls = TLSConfig(
        ca=certificates / "ca.pem",
        cert=(certificates / "client.pem").read_bytes(),
        key=str(certificates / "client.key"),
        server_name="gateway.test",
    )
    async with AsyncTaskGatewayClient(fake.address, tls=tls) as client:
        task_key = await client.submit(generate_request())

    assert task_key == TASK_KEY
    assert seen_identity == [b"client"]


def test_tls_settings_that_cannot_work_are_refused_naming_the_setting(tmp_path: Path) -> None:
    """A key without a certificate, or a PEM file that is not there, is a ValueError naming it."""
    with pytest.raises(ValueError, match=r"tls\.cert and tls\.key go together"):
        TLSConfig(key=b"key")
    with pytest.raises(ValueError, match=r"tls\.ca: cannot read .*missing\.pem"):
        TaskGatewayClient("127.0.0.1:1", tls=TLSConfig(ca=tmp_path / "missing.pem"))


async def test_a_status_detail_that_does_not_parse_raises_a_task_gateway_error(
    fake_gateway: Any, call: Any
) -> None:
    """A grpc-status-details-bin that is no google.rpc.Status (a proxy's mangled trailer) is
    read as no details: the call ends in a TaskGatewayError, not protobuf's DecodeError."""
    fake = await fake_gateway(abort_with_garbled_details)
    retry = RetryPolicy(initial_backoff=0.01, max_attempts=2)

    with pytest.raises(TaskGatewayError) as raised:
        await call(fake.address, "submit", generate_request(), client={"retry": retry})

    # No status came back from the gateway: the request may have arrived.
    assert isinstance(raised.value, OutcomeUnknown)
    assert raised.value.code is grpc.StatusCode.UNAVAILABLE
    assert len(fake.calls) == 2


@pytest.fixture
def resetting_gateway() -> Any:
    """Start gateways whose first calls are reset (see ResettingGateway); stopped after."""
    started: list[ResettingGateway] = []

    def start(resets: int) -> ResettingGateway:
        started.append(ResettingGateway(resets, ANSWER))
        return started[-1]

    yield start
    for gateway in started:
        gateway.stop()


async def test_a_call_the_server_cut_off_is_retried_with_its_key(
    resetting_gateway: Any, call: Any
) -> None:
    """A CANCELLED the client did not cause (the stream reset after the request arrived) may
    have published the task: it is retried under the same key, and answered the second time."""
    server = resetting_gateway(resets=1)

    retry = RetryPolicy(initial_backoff=0.01)
    task_key = await call(server.address, "submit", generate_request(), client={"retry": retry})

    sent = [images_pb2.GenerateRequest.FromString(r).idempotency_key for r in server.requests]
    assert task_key == TASK_KEY
    assert len(sent) == 2
    assert len(set(sent)) == 1


async def test_a_call_cut_off_on_every_attempt_ends_as_outcome_unknown(
    resetting_gateway: Any,
) -> None:
    """When every attempt is cut off, the caller hears OutcomeUnknown with the key, not a plain
    CANCELLED that would say nothing of whether the task was published."""
    server = resetting_gateway(resets=100)
    retry = RetryPolicy(initial_backoff=0.01, max_attempts=3)

    async with AsyncTaskGatewayClient(server.address, retry=retry) as client:
        with pytest.raises(OutcomeUnknown) as raised:
            await client.submit(generate_request(idempotency_key="k-7"))

    assert raised.value.idempotency_key == "k-7"
    assert len(server.requests) == 3


class _ClosedUnderTheCall(grpc.RpcError):
    """What grpc raises for a call whose channel the client closed under it."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.CANCELLED

    def details(self) -> str:
        return "Channel closed!"

    def trailing_metadata(self) -> tuple[()]:
        return ()


def test_a_cancellation_by_the_client_itself_stays_a_plain_cancelled() -> None:
    """The client's own cancellation (closing its channel under a call) is not read as a reset
    by the server: a plain CANCELLED, not retried (another attempt on a closed channel is moot)."""
    failure = from_rpc_error(_ClosedUnderTheCall())

    assert type(failure.error) is TaskGatewayError
    assert failure.error.code is grpc.StatusCode.CANCELLED
    assert not failure.outcome_unknown
