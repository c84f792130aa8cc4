"""Fixtures of the fault-injection suite: a private RabbitMQ node per test.

Without `rabbitmq-server` on PATH the suite skips on a laptop and fails in CI (CI=true), so that
a green CI always means it ran. Boot times and each scenario's accounting are printed at the end
of the run.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DEFINITIONS, unavailable
from tests.support.rabbit_node import RabbitNode, find_scripts

# Filled by the fixtures and tests, printed by pytest_terminal_summary.
BOOT_SECONDS: list[tuple[str, float]] = []
SCENARIO_REPORTS: list[Any] = []  # tests.faults.accounting.Report


@pytest.fixture
async def private_rabbit(
    tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[RabbitNode]:
    """A running RabbitMQ node of this test's own, stopped (killed if need be) afterwards."""
    if find_scripts() is None:
        unavailable("fault-injection tests", "rabbitmq-server or rabbitmqctl is not on PATH")
    node = RabbitNode(tmp_path / "rabbitmq", DEFINITIONS)
    try:
        await node.start()
        yield node
    finally:
        try:
            await node.close()
        finally:
            for seconds in node.boot_seconds:
                BOOT_SECONDS.append((request.node.name, seconds))
                request.node.user_properties.append(("rabbitmq_boot_seconds", seconds))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not BOOT_SECONDS and not SCENARIO_REPORTS:
        return
    terminalreporter.section("fault injection")
    for report in SCENARIO_REPORTS:
        terminalreporter.write_line(report.line())
    if BOOT_SECONDS:
        seconds = sorted(s for _, s in BOOT_SECONDS)
        terminalreporter.write_line(
            f"private RabbitMQ boots: {len(seconds)}, "
            f"min {seconds[0]:.2f}s, median {seconds[len(seconds) // 2]:.2f}s, "
            f"max {seconds[-1]:.2f}s"
        )
