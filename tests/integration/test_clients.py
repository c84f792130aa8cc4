"""The example client in clients/ against a gateway process publishing to RabbitMQ."""

from __future__ import annotations

import asyncio
import json
import signal
import sys

import pytest

from tests.integration.conftest import Topology
from tests.service.gateway_process import ROOT, free_port, read_until, start_gateway_process

CLIENT = ROOT / "clients" / "python" / "publish_images.py"


@pytest.mark.parametrize("mode", [[], ["--stream"]], ids=["one-by-one", "stream"])
async def test_example_client_tasks_land_in_the_queue(
    rabbitmq_url: str, topology: Topology, mode: list[str]
) -> None:
    """Every task key the client prints is a message in images.queue with its payload."""
    grpc_address = f"127.0.0.1:{free_port()}"
    gateway = await start_gateway_process(
        {
            "TASK_GATEWAY__BROKER__ADDRESS": rabbitmq_url,
            "TASK_GATEWAY__GRPC__ADDRESS": grpc_address,
            "TASK_GATEWAY__SERVER__ADDRESS": f"127.0.0.1:{free_port()}",
            "TASK_GATEWAY__WORKERS": "1",
        }
    )
    try:
        await read_until(gateway, "connected to RabbitMQ")
        client = await asyncio.create_subprocess_exec(
            sys.executable,
            str(CLIENT),
            "--address",
            grpc_address,
            "--user-id",
            "client-7",
            "--prompt",
            "a lighthouse at dusk",
            "--count",
            "3",
            *mode,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(client.communicate(), 60)
    finally:
        gateway.send_signal(signal.SIGTERM)
        await asyncio.wait_for(gateway.communicate(), 30)

    assert client.returncode == 0, err.decode()
    printed = dict(line.split(" ", 1) for line in out.decode().splitlines())
    assert sorted(printed) == ["0", "1", "2"]
    landed = await topology.drain("images.queue")
    bodies = {json.loads(m.body)["task_id"]: json.loads(m.body) for m in landed}
    for index, task_key in printed.items():
        user_id, service, task_id = task_key.split(":")
        assert (user_id, service) == ("client-7", "image-generation")
        assert bodies[task_id]["payload"]["image_name"] == f"image-{index}"
        assert bodies[task_id]["payload"]["prompt"] == "a lighthouse at dusk"
    assert len(landed) == 3
