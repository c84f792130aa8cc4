"""The image, without a Docker engine: its install step, start command and health check.

deploy/Dockerfile RUNs deploy/install-wheels.sh on the two wheels; these tests run the same
script into a fresh venv and start what the image's ENTRYPOINT and CMD start, with the files
its COPY instructions put in place, as the image's user would. What they cannot show (the
base image, the non-root user, the layers) `hadolint` checks in `make deploy-check`.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from taskgateway_api.images.v1 import images_pb2, images_pb2_grpc

from tests.deploy.dockerfile import ROOT, Image, runtime_stage
from tests.support.gateway_process import read_until
from tests.support.ports import free_port

INSTALL_SCRIPT = ROOT / "deploy" / "install-wheels.sh"
IMAGE = runtime_stage()


@pytest.fixture(scope="module")
def image_venv(wheels: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding what the image holds in /opt/task-gateway."""
    venv = tmp_path_factory.mktemp("image") / "task-gateway"
    subprocess.run(
        ["sh", str(INSTALL_SCRIPT), str(wheels), str(venv)],
        env=os.environ | {"PYTHON": sys.executable},
        check=True,
        capture_output=True,
        timeout=600,
    )
    return venv


def _image_env(venv: Path, **settings: str) -> dict[str, str]:
    """The image's environment here: its venv first on PATH, no settings but those given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASK_GATEWAY__")}
    return env | {"PATH": f"{venv / 'bin'}{os.pathsep}{env['PATH']}"} | settings


class ImageGateway:
    """The gateway started as the image starts it, on free loopback ports."""

    def __init__(self, venv: Path, image: Image) -> None:
        self.grpc_port, self.http_port = free_port(), free_port()
        self.env = _image_env(
            venv,
            TASK_GATEWAY__GRPC__ADDRESS=f"127.0.0.1:{self.grpc_port}",
            TASK_GATEWAY__SERVER__ADDRESS=f"127.0.0.1:{self.http_port}",
            # gateway.toml names the topology where the image keeps it.
            TASK_GATEWAY__BROKER__DEFINITIONS=image.local(
                "/usr/share/task-gateway/definitions.json"
            ),
        )
        self.command = [image.local(arg) for arg in image.entrypoint + image.cmd]
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, cwd: Path) -> asyncio.subprocess.Process:
        self.process = await asyncio.create_subprocess_exec(
            *self.command,
            cwd=cwd,  # nothing of the checkout on the path
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        await read_until(self.process, "task gateway listening")
        return self.process


@pytest.fixture
async def image_gateway(image_venv: Path, tmp_path: Path) -> AsyncIterator[ImageGateway]:
    gateway = ImageGateway(image_venv, IMAGE)
    await gateway.start(tmp_path)
    yield gateway
    assert gateway.process is not None
    if gateway.process.returncode is None:
        gateway.process.kill()
        await gateway.process.wait()


def test_the_image_installs_with_the_script_these_tests_run() -> None:
    """The runtime stage installs the wheels with deploy/install-wheels.sh, and nothing else."""
    installs = [run for run in IMAGE.runs if "install-wheels.sh" in run]

    assert len(installs) == 1, IMAGE.runs
    assert "source=deploy/install-wheels.sh" in installs[0]
    assert not [run for run in IMAGE.runs if "pip " in run and run not in installs]


async def test_the_installed_gateway_passes_the_health_check_and_serves_grpc(
    image_gateway: ImageGateway,
) -> None:
    """Started by the image's command, the gateway passes its HEALTHCHECK and publishes a task."""
    check = await asyncio.create_subprocess_exec(
        *[IMAGE.local(arg) for arg in IMAGE.healthcheck],
        env=image_gateway.env,
        stderr=asyncio.subprocess.PIPE,
    )
    _, check_errors = await asyncio.wait_for(check.communicate(), 30)

    async with grpc.aio.insecure_channel(f"127.0.0.1:{image_gateway.grpc_port}") as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
        answer = await images_pb2_grpc.ImagesServiceStub(channel).Generate(
            images_pb2.GenerateRequest(
                user_id="7",
                payload=images_pb2.GeneratePayload(
                    model="m", prompt="a lighthouse", image_name="l"
                ),
            ),
            timeout=10,
        )
    assert check.returncode == 0, check_errors.decode()
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert answer.task_key.startswith("7:image-generation:")


async def test_the_installed_gateway_exits_cleanly_on_the_images_stop_signal(
    image_gateway: ImageGateway,
) -> None:
    """The image's STOPSIGNAL makes the gateway shut down gracefully and exit 0."""
    process = image_gateway.process
    assert process is not None

    process.send_signal(signal.Signals[IMAGE.stopsignal])
    output, _ = await asyncio.wait_for(process.communicate(), 30)

    assert process.returncode == 0, output.decode()


def test_the_health_check_fails_when_nothing_answers(tmp_path: Path) -> None:
    """The HEALTHCHECK exits non-zero, naming the URL, when no gateway listens."""
    port = free_port()
    command = [sys.executable if arg == "python" else IMAGE.local(arg) for arg in IMAGE.healthcheck]

    check = subprocess.run(
        command,
        env={"TASK_GATEWAY__SERVER__ADDRESS": f"0.0.0.0:{port}"},
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert check.returncode == 1
    assert f"http://127.0.0.1:{port}/healthz" in check.stderr


def test_the_health_check_probes_the_admin_listener_once_there_is_one() -> None:
    """With TASK_GATEWAY__ADMIN__ADDRESS set, the probe goes to the admin port, not HTTP's."""
    spec = importlib.util.spec_from_file_location("healthcheck", ROOT / "deploy" / "healthcheck.py")
    assert spec is not None
    assert spec.loader is not None
    healthcheck = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(healthcheck)

    assert (
        healthcheck.default_url(
            {
                "TASK_GATEWAY__SERVER__ADDRESS": "0.0.0.0:10010",
                "TASK_GATEWAY__ADMIN__ADDRESS": "0.0.0.0:9090",
            }
        )
        == "http://127.0.0.1:9090/healthz"
    )
    assert healthcheck.default_url({}) == "http://127.0.0.1:10010/healthz"


def test_the_install_script_refuses_a_directory_without_both_wheels(tmp_path: Path) -> None:
    """Given only the server's wheel, the script names the missing one and creates no venv."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "task_gateway-0.1.0-py3-none-any.whl").write_bytes(b"")
    venv = tmp_path / "venv"

    result = subprocess.run(
        ["sh", str(INSTALL_SCRIPT), str(wheels), str(venv)],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 1
    assert "task_gateway_api-*.whl" in result.stderr
    assert not venv.exists()


def test_the_image_exposes_the_grpc_http_and_admin_ports_as_a_non_root_user() -> None:
    """EXPOSE lists 50051, 10010 and 9090, and USER is a numeric non-zero uid (runAsNonRoot)."""
    uid = IMAGE.user.split(":")[0]

    assert IMAGE.exposed == {50051, 10010, 9090}
    assert uid.isdigit(), IMAGE.user
    assert int(uid) != 0


def test_image_files_come_from_the_checkout() -> None:
    """Every file the runtime stage COPYs exists in the checkout (a build would fail otherwise)."""
    missing = [str(source) for source in IMAGE.copies.values() if not source.exists()]

    assert IMAGE.copies
    assert not missing
