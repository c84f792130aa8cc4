"""Several worker processes share the ports and each publishes to RabbitMQ."""

from __future__ import annotations

import asyncio
import json
import re
import signal
from typing import Any

import aiohttp

from tests.integration.conftest import Topology
from tests.integration.test_publish import LEGACY_EXAMPLE
from tests.service.gateway_process import free_port, read_until, start_gateway_process


async def test_two_workers_share_the_ports_and_both_publish(
    rabbitmq_url: str, topology: Topology
) -> None:
    """With --workers 2 both processes serve requests on the one HTTP port; all land."""
    http_port = free_port()
    gateway = await start_gateway_process(
        {
            "TASK_GATEWAY__BROKER__ADDRESS": rabbitmq_url,
            "TASK_GATEWAY__SERVER__ADDRESS": f"127.0.0.1:{http_port}",
            "TASK_GATEWAY__GRPC__ADDRESS": f"127.0.0.1:{free_port()}",
            "TASK_GATEWAY__LOG__FORMAT": "json",
        },
        "--workers",
        "2",
    )
    # Each worker connects on its own; both must be up before the ports are shared fairly.
    started = await read_until(gateway, "connected to RabbitMQ")
    started += await read_until(gateway, "connected to RabbitMQ")
    answers: list[Any] = []
    for _ in range(40):  # a new connection each time, for the kernel to spread
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"http://127.0.0.1:{http_port}/api/v1/broker/publish", json=LEGACY_EXAMPLE
            ) as response,
        ):
            answers.append((response.status, await response.json()))
    gateway.send_signal(signal.SIGTERM)
    assert gateway.stdout is not None
    output, _ = await asyncio.wait_for(gateway.communicate(), 30)

    assert gateway.returncode == 0
    assert {status for status, _ in answers} == {200}
    events = [
        json.loads(line)
        for line in (started + output.decode()).splitlines()
        if line.startswith("{")
    ]
    (workers,) = [e for e in events if e["event"] == "workers started"]
    assert len(workers["pids"]) == 2
    serving = {e["process"] for e in events if e["event"] == "task published"}
    assert serving == set(workers["pids"]), "both workers served requests"
    landed = await topology.drain("images.queue")
    assert sorted(m.message_id for m in landed) == sorted(
        answer["task_key"].rsplit(":", 1)[1] for _, answer in answers
    )
    assert re.search(r'"event": "task gateway stopped"', output.decode())
