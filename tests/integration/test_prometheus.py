"""A real Prometheus scraping a two-worker gateway: every scrape is the whole instance.

Debian's `prometheus` (the server; `make deploy-check` installs it in CI) runs on a free port
with a data directory of its own, scrapes the gateway's /metrics every second and loads the
alert rules of deploy/prometheus/alerts.yaml. Whichever worker answers a scrape, the counts
are the instance's.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import grpc
import pytest
from taskgateway_api.images.v1 import images_pb2, images_pb2_grpc

from tests.conftest import ROOT, Topology, unavailable
from tests.integration.test_publish import LEGACY_EXAMPLE
from tests.support.gateway_process import OWN_CONNECTION, GatewayProcess, read_until
from tests.support.ports import free_port

REQUEST = images_pb2.GenerateRequest(
    user_id="u1", payload=images_pb2.GeneratePayload(model="m", prompt="p", image_name="n")
)
TYPED_CALLS = 30
REST_CALLS = 20


@pytest.fixture
async def gateway(
    rabbitmq_url: str, topology: Topology, tmp_path: Path
) -> AsyncIterator[GatewayProcess]:
    """`python -m gateway --workers 2` on RabbitMQ, ready (every worker connected)."""
    gateway = GatewayProcess(rabbitmq_url, tmp_path, args=("--workers", "2"))
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.stop()


@pytest.fixture
async def prometheus(gateway: GatewayProcess, tmp_path: Path) -> AsyncIterator[str]:
    """A Prometheus server scraping the gateway every second; its base URL."""
    binary = shutil.which("prometheus")
    if binary is None:
        unavailable("the Prometheus test", "no prometheus (apt-get install prometheus)")
    shutil.copy(ROOT / "deploy" / "prometheus" / "alerts.yaml", tmp_path / "alerts.yaml")
    (tmp_path / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "rule_files: [alerts.yaml]\n"
        "scrape_configs:\n"
        "  - job_name: task-gateway\n"
        f"    static_configs: [{{targets: ['{gateway.addresses.http}']}}]\n"
    )
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        binary,
        f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        await read_until(process, "Server is ready to receive web requests")
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        await asyncio.wait_for(process.communicate(), 30)


async def _query(http: aiohttp.ClientSession, base: str, expression: str) -> float | None:
    async with http.get(f"{base}/api/v1/query", params={"query": expression}) as answer:
        result = (await answer.json())["data"]["result"]
    return float(result[0]["value"][1]) if result else None


async def _until(http: aiohttp.ClientSession, base: str, expression: str, wanted: float) -> float:
    """The value of `expression` once Prometheus has it equal to `wanted` (it scrapes every
    second), or the last value it had after 30 s."""
    value = None
    async with asyncio.timeout(30):
        for _ in range(600):  # Prometheus is another process: there is no event to await
            if (value := await _query(http, base, expression)) == wanted:
                break
            await asyncio.sleep(0.5)
    assert value is not None
    return value


async def test_prometheus_counts_every_call_whatever_worker_it_scrapes(
    gateway: GatewayProcess, prometheus: str
) -> None:
    """After N typed gRPC and M REST calls, Prometheus has N handled calls and N+M tasks."""
    for _ in range(TYPED_CALLS):  # a new connection each: the kernel spreads them over workers
        async with grpc.aio.insecure_channel(
            gateway.addresses.grpc, options=OWN_CONNECTION
        ) as channel:
            await images_pb2_grpc.ImagesServiceStub(channel).Generate(REQUEST, timeout=10)
    async with aiohttp.ClientSession() as http:
        for _ in range(REST_CALLS):
            async with (
                aiohttp.ClientSession() as fresh,
                fresh.post(
                    f"{gateway.http_base}/api/v1/broker/publish", json=LEGACY_EXAMPLE
                ) as answer,
            ):
                assert answer.status == 200

        handled = await _until(
            http,
            prometheus,
            'sum(grpc_server_handled_total{grpc_service="images.v1.ImagesService",'
            'grpc_method="Generate",grpc_code="OK"})',
            TYPED_CALLS,
        )
        tasks = await _until(
            http, prometheus, 'sum(task_gateway_tasks_total{code="OK"})', TYPED_CALLS + REST_CALLS
        )
        connected = await _until(http, prometheus, "min(task_gateway_broker_connected)", 1)
        async with http.get(f"{prometheus}/api/v1/rules") as answer:
            groups = (await answer.json())["data"]["groups"]

    assert (handled, tasks, connected) == (TYPED_CALLS, TYPED_CALLS + REST_CALLS, 1)
    (group,) = groups
    assert group["name"] == "task-gateway"
    assert {rule["name"] for rule in group["rules"]} == {
        "TaskGatewayBrokerDisconnected",
        "TaskGatewayErrorRatioHigh",
        "TaskGatewayPublishLatencyHigh",
        "TaskGatewayInFlightNearCap",
        "TaskGatewayNoTasks",
    }
    assert {rule["health"] for rule in group["rules"]} == {"ok"}
