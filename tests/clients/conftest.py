"""The client SDK against a real gateway publishing to the real RabbitMQ (the `gateway`
fixture of tests/conftest.py), and against the small servers of `servers.py`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterable
from typing import Any

import pytest
from aio_pika.abc import AbstractIncomingMessage
from task_gateway_client import AsyncTaskGatewayClient, TaskGatewayClient
from taskgateway_api.images.v1 import images_pb2

from tests.clients.servers import DroppingProxy, FakeGateway, Script


@pytest.fixture
async def dropping_proxy() -> AsyncIterator[Any]:
    """Start proxies to a gateway that drop its first answers; stopped after the test."""
    proxies: list[DroppingProxy] = []

    async def start(upstream: str, drops: int) -> DroppingProxy:
        proxy = DroppingProxy(upstream, drops)
        await proxy.start()
        proxies.append(proxy)
        return proxy

    yield start
    for proxy in proxies:
        await proxy.stop()


@pytest.fixture
async def fake_gateway() -> AsyncIterator[Any]:
    """Start scripted fake gateways; stopped after the test."""
    fakes: list[FakeGateway] = []

    async def start(script: Script, **start_args: Any) -> FakeGateway:
        fake = FakeGateway(script)
        await fake.start(**start_args)
        fakes.append(fake)
        return fake

    yield start
    for fake in fakes:
        await fake.stop()


@pytest.fixture(params=["sync", "async"])
def call(request: pytest.FixtureRequest) -> Any:
    """`await call(target, "submit", request, client_args...)`: one call on a fresh client."""

    async def run(target: str, method: str, *args: Any, client: Any = None, **kwargs: Any) -> Any:
        client_args = client or {}
        if request.param == "sync":

            def in_thread() -> Any:
                with TaskGatewayClient(target, **client_args) as sync_client:
                    return getattr(sync_client, method)(*args, **kwargs)

            return await asyncio.to_thread(in_thread)
        async with AsyncTaskGatewayClient(target, **client_args) as async_client:
            return await getattr(async_client, method)(*args, **kwargs)

    return run


def generate_request(image_name: str = "warrior", **fields: Any) -> images_pb2.GenerateRequest:
    """A valid images.generate request."""
    return images_pb2.GenerateRequest(
        user_id="12345",
        payload=images_pb2.GeneratePayload(
            model="openrouter::google/gemini-3.1-flash-image-preview",
            prompt="post-apocalyptic warrior standing in a ruined city",
            image_name=image_name,
        ),
        **fields,
    )


def task_id(task_key: str) -> str:
    return task_key.rsplit(":", 1)[1]


def task_ids(messages: Iterable[AbstractIncomingMessage]) -> list[str]:
    """The task id of each message, from its body (checked against its message_id)."""
    ids = []
    for message in messages:
        body = json.loads(message.body)
        assert message.message_id == body["task_id"]
        ids.append(body["task_id"])
    return ids
