"""The two distributions as they are deployed: built into wheels, installed into fresh venvs.

`task-gateway-api` (src/generated) is what clients install: the contracts alone, with none of
the server's dependencies. `task-gateway` is the server, which depends on it by name.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import venv
import zipfile
from email.parser import Parser
from pathlib import Path

import grpc
import pytest

from tests.support.gateway_process import read_until
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
SERVER_ONLY = ("aio-pika", "aio_pika", "aiohttp", "structlog", "swagger-ui-py", "swagger_ui_py")


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both wheels, built from this checkout."""
    out = tmp_path_factory.mktemp("wheels")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "-w",
            str(out),
            str(ROOT / "src" / "generated"),
            str(ROOT),
        ],
        check=True,
        timeout=300,
    )
    return out


def _fresh_venv(where: Path, wheels: Path, requirement: str) -> Path:
    """A new venv with `requirement` installed from the wheels (dependencies from the index)."""
    venv.create(where, with_pip=True)
    python = where / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--find-links", str(wheels), requirement],
        check=True,
        timeout=600,
    )
    return python


def _installed(python: Path) -> set[str]:
    listing = subprocess.run(
        [str(python), "-m", "pip", "list", "--format", "json"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return {entry["name"].lower() for entry in json.loads(listing)}


def _wheel(wheels: Path, prefix: str) -> zipfile.ZipFile:
    (path,) = wheels.glob(f"{prefix}-*.whl")
    return zipfile.ZipFile(path)


def _requires(wheel: zipfile.ZipFile) -> list[str]:
    (metadata,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    parsed = Parser().parsestr(wheel.read(metadata).decode())
    return [r.split(";")[0].strip() for r in parsed.get_all("Requires-Dist") or []]


def test_contracts_wheel_holds_one_namespaced_package(wheels: Path) -> None:
    """taskgateway_api is its only top-level package, with stubs, py.typed, the descriptor set."""
    wheel = _wheel(wheels, "task_gateway_api")
    names = wheel.namelist()

    assert {n.split("/")[0] for n in names if ".dist-info/" not in n} == {"taskgateway_api"}
    for member in (
        "taskgateway_api/py.typed",
        "taskgateway_api/contracts.binpb",
        "taskgateway_api/images/v1/images_pb2.py",
        "taskgateway_api/images/v1/images_pb2.pyi",
        "taskgateway_api/videos/v1/videos_pb2_grpc.py",
        "taskgateway_api/taskgateway/v1/gateway_pb2.py",
    ):
        assert member in names, f"{member} is missing from the contracts wheel"
    assert {r.split(">")[0].split("=")[0] for r in _requires(wheel)} == {
        "grpcio",
        "protobuf",
        "googleapis-common-protos",
    }


def test_server_wheel_holds_the_gateway_and_depends_on_the_contracts(wheels: Path) -> None:
    """The server's wheel carries only `gateway` and names the contracts as a dependency."""
    wheel = _wheel(wheels, "task_gateway")
    names = wheel.namelist()

    assert {n.split("/")[0] for n in names if ".dist-info/" not in n} == {"gateway"}
    assert "gateway/__main__.py" in names
    assert "gateway/py.typed" in names
    assert "task-gateway-api==0.1.0" in _requires(wheel)
    assert not [n for n in names if "__pycache__" in n]


def test_contracts_install_alone_without_the_servers_dependencies(
    wheels: Path, tmp_path: Path
) -> None:
    """A client's venv gets the stubs, importable under taskgateway_api, and no server libraries."""
    python = _fresh_venv(tmp_path / "client", wheels, "task-gateway-api")

    installed = _installed(python)
    assert "task-gateway-api" in installed
    assert not installed & set(SERVER_ONLY), installed & set(SERVER_ONLY)
    probe = (
        "from taskgateway_api.images.v1 import images_pb2, images_pb2_grpc\n"
        "from taskgateway_api.taskgateway.v1 import gateway_pb2_grpc\n"
        "print(images_pb2.DESCRIPTOR.services_by_name['ImagesService'].full_name)\n"
        "print(images_pb2_grpc.ImagesServiceStub.__name__)\n"
    )
    out = subprocess.run(
        [str(python), "-c", probe], check=True, capture_output=True, text=True, timeout=60
    ).stdout.split()
    assert out == ["images.v1.ImagesService", "ImagesServiceStub"]


@pytest.fixture
def server_venv(wheels: Path, tmp_path: Path) -> Path:
    return _fresh_venv(tmp_path / "server", wheels, "task-gateway")


async def test_server_wheel_installs_into_a_fresh_venv_and_serves(
    server_venv: Path, tmp_path: Path
) -> None:
    """`pip install` of the server's wheel gives a `task-gateway` that answers gRPC and REST."""
    grpc_port, http_port = free_port(), free_port()
    definitions = ROOT / "deploy" / "rabbitmq" / "definitions.json"
    process = await asyncio.create_subprocess_exec(
        str(server_venv.parent / "task-gateway"),
        "--workers",
        "1",
        cwd=tmp_path,  # nothing of the checkout on the path
        env={
            "TASK_GATEWAY__GRPC__ADDRESS": f"127.0.0.1:{grpc_port}",
            "TASK_GATEWAY__SERVER__ADDRESS": f"127.0.0.1:{http_port}",
            "TASK_GATEWAY__BROKER__DEFINITIONS": str(definitions),
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        await read_until(process, "task gateway listening")
        from taskgateway_api.taskgateway.v1 import gateway_pb2, gateway_pb2_grpc

        async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = gateway_pb2_grpc.TaskGatewayServiceStub(channel)
            catalog = await stub.ListTaskTypes(gateway_pb2.ListTaskTypesRequest(), timeout=10)
            answer = await stub.Publish(
                gateway_pb2.PublishRequest(
                    user_id="7",
                    task_type="videos.generate",
                    payload={"model": "m", "prompt": "a tide", "video_name": "tide"},
                ),
                timeout=10,
            )
        assert "images.generate" in [t.task_type for t in catalog.task_types]
        assert answer.task_key.startswith("7:video-generation:")
        reader, writer = await asyncio.open_connection("127.0.0.1", http_port)
        writer.write(b"GET /openapi.json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        response = await reader.read()
        writer.close()
        assert response.startswith(b"HTTP/1.1 200"), response[:200]
        assert b'"openapi": "3.1.0"' in response
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 30)
    assert process.returncode == 0
