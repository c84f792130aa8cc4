"""The SDK against a locked-down gateway: TLS, a bearer token, and a quota it waits out."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import pytest
import trustme
from task_gateway_client import (
    AsyncTaskGatewayClient,
    QuotaExceeded,
    RetryPolicy,
    TLSConfig,
    Unauthenticated,
)
from taskgateway_api.images.v1 import images_pb2

from gateway.config import AuthSettings, TlsSettings
from tests.conftest import Topology, make_settings, replace_settings, wait_connected

TOKEN = "sdk-test-token"


@pytest.fixture
async def secured(
    start_gateway: Any, rabbitmq_url: str, topology: Topology, tmp_path: Path
) -> tuple[str, bytes]:
    """A gateway with TLS on gRPC and auth required; a client allowed 2 tasks a second, burst
    1. Its address and the CA to trust."""
    ca = trustme.CA()
    issued = ca.issue_cert("localhost")
    issued.cert_chain_pems[0].write_to_path(str(tmp_path / "server.crt"))
    issued.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    (tmp_path / "clients.toml").write_text(
        "[[clients]]\n"
        'name = "sdk"\n'
        f'token_sha256 = "{hashlib.sha256(TOKEN.encode()).hexdigest()}"\n'
        'task_types = ["images.*"]\n'
        "rate_per_second = 2\nburst = 1\n"
    )
    settings = replace_settings(
        make_settings(rabbitmq_url),
        "grpc",
        tls=TlsSettings(str(tmp_path / "server.crt"), str(tmp_path / "server.key")),
    )
    settings = dataclasses.replace(
        settings, auth=AuthSettings("required", str(tmp_path / "clients.toml"))
    )
    running = await start_gateway(settings)
    await wait_connected(running.gateway)
    return f"localhost:{running.gateway.grpc_port}", ca.cert_pem.bytes()


def request() -> images_pb2.GenerateRequest:
    return images_pb2.GenerateRequest(
        user_id="9", payload=images_pb2.GeneratePayload(model="m", prompt="p", image_name="n")
    )


async def test_the_sdk_waits_out_a_quota_the_gateway_announces(
    secured: tuple[str, bytes], topology: Topology
) -> None:
    """Three tasks at once against a quota of burst 1, 2/s: the SDK honours the gateway's
    RetryInfo and all three land, each once."""
    target, ca = secured
    async with AsyncTaskGatewayClient(target, token=TOKEN, tls=TLSConfig(ca=ca)) as client:
        keys = await asyncio.gather(*(client.submit(request()) for _ in range(3)))

    landed = await topology.drain("images.queue")
    assert sorted(m.message_id for m in landed) == sorted(k.rsplit(":", 1)[1] for k in keys)


async def test_without_retries_the_quota_is_a_typed_error(secured: tuple[str, bytes]) -> None:
    """With retries off, the second task at once raises QuotaExceeded; a wrong token raises
    Unauthenticated."""
    target, ca = secured
    once = RetryPolicy(max_attempts=1)
    async with AsyncTaskGatewayClient(
        target, token=TOKEN, tls=TLSConfig(ca=ca), retry=once
    ) as client:
        await client.submit(request())
        with pytest.raises(QuotaExceeded):
            await client.submit(request())
    async with AsyncTaskGatewayClient(
        target, token="wrong", tls=TLSConfig(ca=ca), retry=once
    ) as stranger:
        with pytest.raises(Unauthenticated):
            await stranger.submit(request())
