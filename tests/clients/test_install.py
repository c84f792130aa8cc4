"""The SDK as a service installs it: `pip install ./clients/python` into a fresh venv, and the
wheel an internal index would get."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import venv
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

from tests.clients.conftest import task_id, task_ids
from tests.conftest import ROOT, RunningGateway
from tests.support.rabbitmq import Topology

CLIENT = ROOT / "clients" / "python"
SERVER_ONLY = {"aio-pika", "aiormq", "aiohttp", "structlog", "swagger-ui-py"}

# Run by the venv's Python from a directory outside the checkout.
PROBE = """
import sys
from task_gateway_client import TaskGatewayClient
from taskgateway_api.images.v1 import images_pb2

try:
    import task_gateway_client.consumer
except ImportError as error:
    print("consumer:", error, file=sys.stderr)

with TaskGatewayClient(sys.argv[1]) as client:
    print(client.submit(images_pb2.GenerateRequest(
        user_id="12345",
        payload=images_pb2.GeneratePayload(model="m", prompt="a fox", image_name="fox"),
    )))
    print(client.publish(
        "videos.generate", "12345", {"model": "veo", "prompt": "waves", "video_name": "waves"}
    ))
"""


def _pip(python: Path, *args: str) -> str:
    """This Python's pip, acting on the venv of `python` (which has no pip of its own)."""
    return subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), *args],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    ).stdout


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with nothing but `pip install ./clients/python` in it; its Python."""
    where = tmp_path_factory.mktemp("client-venv")
    venv.create(where, with_pip=False)
    python = where / "bin" / "python"
    _pip(python, "install", "--quiet", str(CLIENT))
    return python


async def test_a_fresh_install_publishes_typed_and_generic_tasks(
    client_venv: Path, gateway: RunningGateway, topology: Topology, tmp_path: Path
) -> None:
    """With only the SDK installed, a script submits and publishes; both tasks land."""
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    process = await asyncio.create_subprocess_exec(
        str(client_venv),
        str(probe),
        gateway.address,
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)

    assert process.returncode == 0, err.decode()
    image_key, video_key = out.decode().split()
    assert task_ids(await topology.drain("images.queue")) == [task_id(image_key)]
    assert task_ids(await topology.drain("videos.queue")) == [task_id(video_key)]
    assert "pip install 'task-gateway-client[consumer]'" in err.decode()


def test_a_fresh_install_holds_the_sdk_and_the_contracts_but_no_server_library(
    client_venv: Path,
) -> None:
    """The venv has task-gateway-client and task-gateway-api, and no aio-pika or aiohttp."""
    installed = {p["name"].lower() for p in json.loads(_pip(client_venv, "list", "--format=json"))}

    assert {"task-gateway-client", "task-gateway-api", "grpcio-status"} <= installed
    assert not installed & SERVER_ONLY, installed & SERVER_ONLY


def test_a_wheel_for_an_index_names_the_contracts_by_version(tmp_path: Path) -> None:
    """Built with TASK_GATEWAY_API_REQUIREMENT, the wheel requires task-gateway-api by version,
    with no file:// URL, ships py.typed, and keeps aio-pika in the consumer extra."""
    build = ["wheel", "--quiet", "--no-deps", "-w", str(tmp_path), str(CLIENT)]
    subprocess.run(
        [sys.executable, "-m", "pip", *build],
        check=True,
        timeout=300,
        env=os.environ | {"TASK_GATEWAY_API_REQUIREMENT": "task-gateway-api==0.1.0"},
    )
    (wheel_path,) = tmp_path.glob("task_gateway_client-*.whl")
    wheel = zipfile.ZipFile(wheel_path)
    (metadata,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    requires = Parser().parsestr(wheel.read(metadata).decode()).get_all("Requires-Dist") or []

    assert "task-gateway-api==0.1.0" in requires
    assert not [r for r in requires if "file:" in r]
    assert "aio-pika>=10.2; extra == 'consumer'" in requires
    assert "task_gateway_client/py.typed" in wheel.namelist()
