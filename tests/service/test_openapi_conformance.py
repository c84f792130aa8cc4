"""The OpenAPI document is valid and the REST shim keeps to it under property-based testing."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
from openapi_spec_validator import validate

from tests.conftest import make_settings
from tests.support.gateway_process import read_until, start_gateway_process
from tests.support.ports import free_port


async def test_served_openapi_document_is_valid(start_gateway: Any) -> None:
    """GET /openapi.json serves an OpenAPI 3.1 document that passes the spec validator."""
    running = await start_gateway(make_settings())
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{running.gateway.http_port}/openapi.json") as response,
    ):
        document = await response.json()

    assert response.status == 200
    assert document["openapi"] == "3.1.0"
    validate(document)
    assert "post" in document["paths"]["/api/v1/broker/publish"]


async def test_schemathesis_finds_no_server_error_nor_schema_break() -> None:
    """A property-based schemathesis run (every default check) against the shim finds nothing."""
    http_port = free_port()
    gateway = await start_gateway_process(
        {
            "TASK_GATEWAY__SERVER__ADDRESS": f"127.0.0.1:{http_port}",
            "TASK_GATEWAY__GRPC__ADDRESS": f"127.0.0.1:{free_port()}",
            "TASK_GATEWAY__LOG__LEVEL": "warning",
        }
    )
    try:
        await read_until(gateway, "NO RABBITMQ CONFIGURED")
        assert gateway.stdout is not None
        drain = asyncio.ensure_future(gateway.stdout.read())  # a full pipe would stall it
        # The in-memory broker is ready as soon as the port answers.
        schemathesis = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).with_name("st")),
            "--config-file", str(Path(__file__).with_name("schemathesis.toml")),
            "run",
            f"http://127.0.0.1:{http_port}/openapi.json",
            "--max-examples", "40",
            "--seed", "20261124",
            "--wait-for-schema", "20",
            "--output-sanitize", "false",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        output, _ = await asyncio.wait_for(schemathesis.communicate(), 300)
    finally:
        gateway.send_signal(signal.SIGTERM)
        await asyncio.wait_for(gateway.wait(), 30)
    await drain

    report = output.decode()
    assert schemathesis.returncode == 0, report
    assert "No issues found" in report.strip().splitlines()[-1], report
