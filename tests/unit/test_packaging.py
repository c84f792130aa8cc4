"""The wheel: what `pip install .` deploys must import the way the source tree does."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_wheel_installs_generated_packages_at_the_top_level(tmp_path: Path) -> None:
    """gateway, images, videos and taskgateway are top-level packages, with the descriptor set."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp_path), "."],
        cwd=ROOT,
        check=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("task_gateway-*.whl")
    names = zipfile.ZipFile(wheel).namelist()

    assert {name.split("/")[0] for name in names if ".dist-info/" not in name} == {
        "gateway",
        "images",
        "videos",
        "taskgateway",
    }
    for module in (
        "gateway/__main__.py",
        "gateway/py.typed",
        "images/v1/images_pb2.py",
        "videos/v1/videos_pb2_grpc.py",
        "taskgateway/v1/gateway_pb2.py",
        "taskgateway/v1/contracts.binpb",
    ):
        assert module in names, f"{module} is missing from the wheel"
    assert not [name for name in names if "__pycache__" in name]
