"""Against RabbitMQ, with two workers: quotas hold for the instance, secrets stay secret."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families
from taskgateway_api.images.v1 import images_pb2, images_pb2_grpc
from yarl import URL

from tests.conftest import Topology
from tests.support.gateway_process import OWN_CONNECTION, GatewayProcess
from tests.support.rabbitmq import rabbitmqctl

REQUEST = images_pb2.GenerateRequest(
    user_id="7", payload=images_pb2.GeneratePayload(model="m", prompt="p", image_name="n")
)
RATE, BURST = 10, 5
STOP_GRACE = 30.0  # seconds from SIGTERM to SIGKILL


async def _until_reconnected(http_port: int, workers: int) -> None:
    """Every worker counted a reconnect on /metrics (summed over the workers), so each has
    noticed the lost connection and logged it before it was stopped."""
    async with aiohttp.ClientSession() as http, asyncio.timeout(30):
        while True:
            async with http.get(f"http://127.0.0.1:{http_port}/metrics") as answer:
                text = await answer.text()
            reconnects = sum(
                sample.value
                for family in text_string_to_metric_families(text)
                for sample in family.samples
                if sample.name == "task_gateway_broker_reconnects_total"
            )
            if reconnects >= workers:
                return
            await asyncio.sleep(0.1)


@pytest.fixture
async def gateway(
    rabbitmq_url: str, topology: Topology, tmp_path: Path
) -> AsyncIterator[dict[str, Any]]:
    """Two workers, auth required, a client with a quota; RabbitMQ as a user with a password
    of its own; the whole output at debug level, kept for the test to read."""
    token = secrets.token_urlsafe(24)
    (tmp_path / "clients.toml").write_text(
        "[[clients]]\n"
        'name = "bulk"\n'
        f'token_sha256 = "{hashlib.sha256(token.encode()).hexdigest()}"\n'
        'task_types = ["images.*"]\n'
        f"rate_per_second = {RATE}\nburst = {BURST}\n"
    )
    vhost = URL(rabbitmq_url).path.lstrip("/")
    user, password = f"gw-{secrets.token_hex(4)}", secrets.token_urlsafe(18)
    rabbitmqctl("add_user", user, password)
    rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
    process = GatewayProcess(
        str(URL(rabbitmq_url).with_user(user).with_password(password)),
        tmp_path,
        args=("--workers", "2"),
        settings={
            "TASK_GATEWAY__AUTH__MODE": "required",
            "TASK_GATEWAY__AUTH__CLIENTS_FILE": str(tmp_path / "clients.toml"),
            "TASK_GATEWAY__LOG__LEVEL": "debug",
            # The console renderer, the gateway's outside production: its tracebacks show
            # the frames' local variables, where a secret would show too.
            "TASK_GATEWAY__LOG__FORMAT": "console",
        },
    )
    try:
        await process.start()
        yield {
            "grpc": process.addresses.grpc,
            "http": process.addresses.http_port,
            "token": token,
            "password": password,
            "vhost": vhost,
            "process": process,
        }
    finally:
        await process.stop(STOP_GRACE)
        await asyncio.to_thread(rabbitmqctl, "delete_user", user)


async def _publish(address: str, token: str) -> grpc.StatusCode:
    """One typed task on a new connection (the kernel picks the worker)."""
    async with grpc.aio.insecure_channel(address, options=OWN_CONNECTION) as channel:
        try:
            await images_pb2_grpc.ImagesServiceStub(channel).Generate(
                REQUEST, metadata=(("authorization", f"Bearer {token}"),), timeout=10
            )
        except grpc.aio.AioRpcError as error:
            return error.code()
    return grpc.StatusCode.OK


async def test_a_quota_holds_for_the_instance_whatever_worker_answers(
    gateway: dict[str, Any], topology: Topology
) -> None:
    """Over fresh connections to two workers, at most burst + rate x seconds tasks (+10%) pass;
    the rest are RESOURCE_EXHAUSTED, and exactly the passed ones land."""
    started = time.monotonic()
    codes = await asyncio.gather(*(_publish(gateway["grpc"], gateway["token"]) for _ in range(60)))
    elapsed = time.monotonic() - started

    passed = codes.count(grpc.StatusCode.OK)
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert BURST <= passed <= (BURST + RATE * elapsed) * 1.1, (passed, elapsed)
    assert len(await topology.drain("images.queue")) == passed


async def test_no_log_line_holds_the_token_or_the_amqp_password(gateway: dict[str, Any]) -> None:
    """A debug-level run with good, bad and missing tokens and a lost broker connection logs
    neither the token nor the AMQP password."""
    for token in (gateway["token"], "not-the-token", ""):
        await _publish(gateway["grpc"], token)
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"http://127.0.0.1:{gateway['http']}/api/v1/images/generate",
            json={"user_id": "7", "payload": {"model": "m", "prompt": "p", "image_name": "n"}},
            headers={"Authorization": f"Bearer {gateway['token']}X"},
        ) as answer,
    ):
        assert answer.status == 401
    vhost = gateway["vhost"]
    rabbitmqctl("close_all_connections", "--vhost", vhost, "test: the gateway reconnects")
    # Not /readyz: it may still be 200 before a worker noticed, and a worker stopped before
    # it noticed never logs the loss.
    await _until_reconnected(gateway["http"], workers=2)
    process: GatewayProcess = gateway["process"]
    status = await process.stop(STOP_GRACE)
    assert status != -signal.SIGKILL, "no clean stop: what it logs on the way out is missing"
    text = process.output()

    assert "task published" in text, "the run was logged at all"
    assert "lost the connection to RabbitMQ; reconnecting" in text, "the lost broker was logged"
    assert gateway["token"] not in text
    assert gateway["password"] not in text
