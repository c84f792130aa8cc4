"""Running `python -m gateway` in a process of its own, as an operator would."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def start_gateway_process(env: dict[str, str], *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        *args,
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if not k.startswith("TASK_GATEWAY__")} | env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )


async def read_until(process: asyncio.subprocess.Process, text: str) -> str:
    assert process.stdout is not None
    seen = []
    async with asyncio.timeout(20):
        while line := (await process.stdout.readline()).decode():
            seen.append(line)
            if text in line:
                return "".join(seen)
    pytest.fail(f"the gateway exited before logging {text!r}:\n{''.join(seen)}")
