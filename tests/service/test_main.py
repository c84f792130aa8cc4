"""`python -m gateway` as an operator runs it: start-up, configuration errors, signals."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _start(env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if not k.startswith("TASK_GATEWAY__")} | env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )


async def _read_until(process: asyncio.subprocess.Process, text: str) -> str:
    assert process.stdout is not None
    seen = []
    async with asyncio.timeout(20):
        while line := (await process.stdout.readline()).decode():
            seen.append(line)
            if text in line:
                return "".join(seen)
    pytest.fail(f"the gateway exited before logging {text!r}:\n{''.join(seen)}")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_signal_stops_the_gateway_cleanly(signum: signal.Signals) -> None:
    """On SIGTERM or SIGINT the gateway shuts down gracefully and exits 0."""
    port = _free_port()
    process = await _start({"TASK_GATEWAY__GRPC__ADDRESS": f"127.0.0.1:{port}"})
    started = await _read_until(process, "task gateway listening")
    assert "NO RABBITMQ CONFIGURED" in started, "the in-memory broker announces itself"

    process.send_signal(signum)
    stopped = await _read_until(process, "task gateway stopped")

    assert "shutting down" in stopped
    assert await asyncio.wait_for(process.wait(), 20) == 0


async def test_bad_configuration_stops_start_up_naming_the_key() -> None:
    """A bad setting exits 2 with a message naming the setting and its variable."""
    process = await _start({"TASK_GATEWAY__BROKER__MAX_IN_FLIGHT": "many"})
    output, _ = await asyncio.wait_for(process.communicate(), 20)

    assert process.returncode == 2
    assert "broker.max_in_flight" in output.decode()
    assert "TASK_GATEWAY__BROKER__MAX_IN_FLIGHT" in output.decode()
