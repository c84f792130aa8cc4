"""The REST shim's answers that need a broker the test controls: 429, 504, 500, 503."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from tests.conftest import make_settings, replace_settings
from tests.service.test_grpc_service import HeldBroker

TASK = {"user_id": "u1", "payload": {"model": "m", "prompt": "p", "image_name": "n"}}


@pytest.fixture
async def http() -> Any:
    async with aiohttp.ClientSession() as session:
        yield session


async def _post(http: aiohttp.ClientSession, running: Any, **kwargs: Any) -> tuple[int, Any]:
    url = f"http://127.0.0.1:{running.gateway.http_port}/api/v1/images/generate"
    async with http.post(url, json=TASK, **kwargs) as response:
        return response.status, await response.json()


async def test_in_flight_cap_is_429(start_gateway: Any, http: aiohttp.ClientSession) -> None:
    """Past broker.max_in_flight, a REST request is 429 with code RESOURCE_EXHAUSTED."""
    broker = HeldBroker()
    running = await start_gateway(
        replace_settings(make_settings(), "broker", max_in_flight=1), broker
    )
    first = asyncio.ensure_future(_post(http, running))
    await broker.arrived.wait()

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
    await broker.arrived.wait()
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
