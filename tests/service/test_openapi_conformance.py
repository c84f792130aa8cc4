"""The OpenAPI document is valid and the REST shim keeps to it under property-based testing."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import aiohttp
from openapi_spec_validator import validate

from tests.conftest import make_settings
from tests.support.gateway_process import GatewayProcess


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


async def test_schemathesis_finds_no_server_error_nor_schema_break(tmp_path: Path) -> None:
    """A property-based schemathesis run (every default check) against the shim finds nothing."""
    gateway = GatewayProcess("", tmp_path)  # no broker address: the in-memory broker
    await gateway.start()
    try:
        schemathesis = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).with_name("st")),
            "--config-file", str(Path(__file__).with_name("schemathesis.toml")),
            "run",
            f"{gateway.http_base}/openapi.json",
            "--max-examples", "40",
            "--seed", "20261124",
            "--wait-for-schema", "20",
            "--output-sanitize", "false",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        output, _ = await asyncio.wait_for(schemathesis.communicate(), 300)
    finally:
        await gateway.stop()

    report = output.decode()
    assert schemathesis.returncode == 0, report
    assert "No issues found" in report.strip().splitlines()[-1], report
