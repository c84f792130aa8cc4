"""The examples of clients/ run as a reader would run them, against a gateway on RabbitMQ, so
that none of them can rot: the SDK's example scripts, and the grpcurl and curl blocks of
clients/README.md."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sys
from collections import Counter
from pathlib import Path

import pytest
from task_gateway_client import AsyncTaskGatewayClient

from tests.clients.conftest import generate_request, task_id, task_ids
from tests.conftest import ROOT, RunningGateway
from tests.support.rabbitmq import Topology

EXAMPLES = ROOT / "clients" / "python" / "examples"
README = ROOT / "clients" / "README.md"
TASK_KEY = re.compile(r"12345:[a-z-]+-generation:[0-9a-f-]{36}")
# The examples import the SDK and the contracts from the checkout, as the README shows.
ENV = os.environ | {
    "PYTHONPATH": os.pathsep.join(
        [str(ROOT / "clients" / "python" / "src"), str(ROOT / "src" / "generated")]
    ),
    # grpcurl comes with the dev extra, next to this Python.
    "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
}


async def run(*command: str) -> str:
    """Run a command to its end; its stdout, or a failure showing both outputs."""
    process = await asyncio.create_subprocess_exec(
        *command,
        env=ENV,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, f"{command[:3]} exited {process.returncode}:\n{out!r}\n{err!r}"
    return out.decode()


async def test_producer_example_publishes_a_typed_and_a_generic_task(
    gateway: RunningGateway, topology: Topology
) -> None:
    """producer.py prints two task keys, and each is a message in its queue."""
    out = await run(
        sys.executable,
        str(EXAMPLES / "producer.py"),
        "--target",
        gateway.address,
        "--user-id",
        "12345",
    )

    image_key, video_key = out.split()
    assert task_ids(await topology.drain("images.queue")) == [task_id(image_key)]
    assert task_ids(await topology.drain("videos.queue")) == [task_id(video_key)]


async def test_batching_producer_example_lands_one_message_per_printed_key(
    gateway: RunningGateway, topology: Topology
) -> None:
    """batching_producer.py --count 250 prints 250 keys, each exactly one message."""
    out = await run(
        sys.executable,
        str(EXAMPLES / "batching_producer.py"),
        "--target",
        gateway.address,
        "--user-id",
        "12345",
        "--count",
        "250",
    )

    keys = out.split()
    assert len(set(keys)) == 250
    landed = Counter(task_ids(await topology.drain("images.queue")))
    assert landed == Counter(task_id(key) for key in keys)


async def test_consumer_example_prints_each_task_once_and_a_duplicate_as_such(
    gateway: RunningGateway, rabbitmq_url: str, topology: Topology
) -> None:
    """consumer.py takes two tasks and a retried copy of one: two tasks, one duplicate."""
    async with AsyncTaskGatewayClient(gateway.address) as client:
        first = await client.submit(generate_request("first", idempotency_key="k-1"))
        second = await client.submit(generate_request("second"))
        again = await client.submit(generate_request("first", idempotency_key="k-1"))

    out = await run(
        sys.executable,
        str(EXAMPLES / "consumer.py"),
        "--amqp-url",
        rabbitmq_url,
        "--exit-after",
        "3",
    )

    assert again == first
    assert out.splitlines() == [
        f"task {task_id(first)} images.generate first",
        f"task {task_id(second)} images.generate second",
        f"duplicate {task_id(first)}",
    ]
    assert await topology.drain("images.queue") == []


def _readme_commands() -> list[str]:
    """The ```sh blocks of clients/README.md that call grpcurl or curl."""
    blocks = re.findall(r"^```sh\n(.*?)^```", README.read_text(), re.DOTALL | re.MULTILINE)
    return [b for b in blocks if b.split(maxsplit=1)[0] in ("grpcurl", "curl")]


def test_the_readme_shows_grpcurl_and_curl_for_each_contract() -> None:
    """The README's runnable blocks cover typed gRPC, batches, the legacy and a typed route."""
    commands = "\n".join(_readme_commands())

    for shown in (
        "images.v1.ImagesService/Generate",
        "taskgateway.v1.TaskGatewayService/PublishBatch",
        "/api/v1/broker/publish ",
        "/api/v1/images/generate",
        "/api/v1/broker/publish-batch",
    ):
        assert shown in commands


async def test_readme_grpcurl_and_curl_blocks_publish_what_they_print(
    gateway: RunningGateway, topology: Topology
) -> None:
    """Each grpcurl and curl block of clients/README.md prints task keys that landed, once each."""
    if shutil.which("grpcurl", path=ENV["PATH"]) is None or shutil.which("curl") is None:
        pytest.fail("grpcurl (the dev extra) and curl are needed to run the README's examples")
    printed: list[str] = []
    for command in _readme_commands():
        command = command.replace("localhost:50051", gateway.address)
        command = command.replace("localhost:10010", f"127.0.0.1:{gateway.gateway.http_port}")
        out = await run("bash", "-euo", "pipefail", "-c", command)
        keys = TASK_KEY.findall(out)
        assert keys, f"no task key in the answer to:\n{command}\n{out}"
        printed += keys

    landed = await topology.drain_all()
    assert len(printed) == 7
    assert Counter(task_ids(landed["images.queue"] + landed["videos.queue"])) == Counter(
        task_id(key) for key in printed
    )
