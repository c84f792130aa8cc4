"""`python -m gateway` as an operator runs it: start-up, configuration errors, signals."""

from __future__ import annotations

import asyncio
import signal

import pytest

from tests.support.gateway_process import Addresses, read_until, start_gateway_process


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_signal_stops_the_gateway_cleanly(signum: signal.Signals) -> None:
    """On SIGTERM or SIGINT the gateway shuts down gracefully and exits 0."""
    process = await start_gateway_process(Addresses().settings())
    started = await read_until(process, "task gateway listening")
    assert "NO RABBITMQ CONFIGURED" in started, "the in-memory broker announces itself"

    process.send_signal(signum)
    stopped = await read_until(process, "task gateway stopped")

    assert "shutting down" in stopped
    assert await asyncio.wait_for(process.wait(), 20) == 0


async def test_bad_configuration_stops_start_up_naming_the_key() -> None:
    """A bad setting exits 2 with a message naming the setting and its variable."""
    process = await start_gateway_process(
        Addresses().settings() | {"TASK_GATEWAY__BROKER__MAX_IN_FLIGHT": "many"}
    )
    output, _ = await asyncio.wait_for(process.communicate(), 20)

    assert process.returncode == 2
    assert "broker.max_in_flight" in output.decode()
    assert "TASK_GATEWAY__BROKER__MAX_IN_FLIGHT" in output.decode()
