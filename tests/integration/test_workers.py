"""Several worker processes share the ports and each publishes to RabbitMQ."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
from typing import Any

import aiohttp

from tests.conftest import Topology
from tests.integration.test_publish import LEGACY_EXAMPLE
from tests.support.gateway_process import read_until, start_gateway_process
from tests.support.ports import free_port


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


async def _started_workers(rabbitmq_url: str) -> tuple[asyncio.subprocess.Process, list[int]]:
    gateway = await start_gateway_process(
        {
            "TASK_GATEWAY__BROKER__ADDRESS": rabbitmq_url,
            "TASK_GATEWAY__SERVER__ADDRESS": f"127.0.0.1:{free_port()}",
            "TASK_GATEWAY__GRPC__ADDRESS": f"127.0.0.1:{free_port()}",
            "TASK_GATEWAY__LOG__FORMAT": "json",
        },
        "--workers",
        "2",
    )
    # Both workers connected, and the first one said which they are, in whatever order.
    seen = ""
    while seen.count("connected to RabbitMQ") < 2 or "workers started" not in seen:
        seen += await read_until(gateway, '"event"')
    (event,) = [json.loads(line) for line in seen.splitlines() if "workers started" in line]
    return gateway, event["pids"]


async def _exited(pid: int) -> None:
    """Until the process has exited (a pidfd turns readable then, also for a non-child)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    loop = asyncio.get_running_loop()
    exited = asyncio.Event()
    loop.add_reader(fd, exited.set)
    try:
        await exited.wait()
    finally:
        loop.remove_reader(fd)
        os.close(fd)


async def test_a_worker_that_dies_stops_the_gateway_with_an_error(
    rabbitmq_url: str, topology: Topology
) -> None:
    """When a forked worker is killed, the first one logs it, stops, and the gateway exits 1."""
    gateway, pids = await _started_workers(rabbitmq_url)
    assert pids[0] == gateway.pid

    os.kill(pids[1], signal.SIGKILL)
    output, _ = await asyncio.wait_for(gateway.communicate(), 30)

    assert gateway.returncode == 1
    events = [json.loads(line) for line in output.decode().splitlines() if line.startswith("{")]
    (lost,) = [e for e in events if e["event"] == "a worker exited on its own; stopping the others"]
    assert (lost["pid"], lost["exit_code"]) == (pids[1], -signal.SIGKILL)
    assert "task gateway stopped" in {e["event"] for e in events}


async def test_forked_workers_stop_when_the_first_one_is_killed(
    rabbitmq_url: str, topology: Topology
) -> None:
    """SIGKILL to the first worker (no handler runs) still stops the workers it forked."""
    gateway, pids = await _started_workers(rabbitmq_url)

    gateway.kill()
    await asyncio.wait_for(gateway.communicate(), 30)

    await asyncio.wait_for(_exited(pids[1]), 20)
