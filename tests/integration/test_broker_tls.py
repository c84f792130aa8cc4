"""AMQPS to the broker: a CA, a password or a client certificate (EXTERNAL), and what breaks it.

The broker is a private RabbitMQ node with a TLS listener (verify_peer, the EXTERNAL mechanism
of `rabbitmq_auth_mechanism_ssl`); its certificates, the client's and a CA that signed neither
are made for the run with `trustme`. The gateway's tasks are read back from the queue over the
node's plain listener, and the broker's own list of connections says how the gateway logged in.
Files of `[broker.tls]` that cannot be used stop start-up before any connection (no broker
needed for those).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
import structlog.testing
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc
from taskgateway_api.images.v1 import images_pb2, images_pb2_grpc

from gateway.app.server import make_broker
from gateway.config import BrokerTlsSettings
from gateway.core.tasks import new_task_id
from gateway.errors import ConfigError
from tests.conftest import DEFINITIONS, make_settings, replace_settings, unavailable, wait_connected
from tests.support.gateway_process import start_gateway_process
from tests.support.rabbit_node import NodeTls, RabbitNode, find_scripts
from tests.support.rabbitmq import topology_at

# The client certificate's common name: the RabbitMQ user EXTERNAL logs in as.
CERTIFICATE_USER = "task-gateway"


@dataclass(frozen=True)
class Pki:
    ca: Path  # signed the node's certificate and the client's
    other_ca: Path  # signed neither
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA, the node's certificate for 127.0.0.1, a client certificate, and a stranger CA."""
    base = tmp_path_factory.mktemp("pki")
    ca, other = trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("gateway.test", common_name=CERTIFICATE_USER)
    pki = Pki(*(base / name for name in ("ca.pem", "other-ca.pem", "server.pem", "server.key",
                                          "client.pem", "client.key")))  # fmt: skip
    ca.cert_pem.write_to_path(str(pki.ca))
    other.cert_pem.write_to_path(str(pki.other_ca))
    for leaf, cert, key in ((server, pki.server_cert, pki.server_key),
                            (client, pki.client_cert, pki.client_key)):  # fmt: skip
        leaf.cert_chain_pems[0].write_to_path(str(cert))
        leaf.private_key_pem.write_to_path(str(key))
    return pki


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def tls_node(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RabbitNode]:
    """A private RabbitMQ node with an AMQPS listener, shared by this module's tests."""
    if find_scripts() is None:
        unavailable("AMQPS tests", "rabbitmq-server or rabbitmqctl is not on PATH")
    tls = NodeTls(pki.ca, pki.server_cert, pki.server_key, certificate_users=[CERTIFICATE_USER])
    node = RabbitNode(tmp_path_factory.mktemp("rabbitmq"), DEFINITIONS, tls=tls)
    try:
        await node.start()
        yield node
    finally:
        await node.close()


async def publish_image(channel: grpc.aio.Channel, key: str) -> str:
    """One images.generate task; its task id."""
    await images_pb2_grpc.ImagesServiceStub(channel).Generate(
        images_pb2.GenerateRequest(
            user_id="tls-user",
            payload=images_pb2.GeneratePayload(model="m", prompt="p", image_name="i"),
            idempotency_key=key,
        ),
        timeout=5,
    )
    return new_task_id("tls-user", "images.generate", key)


async def publish_over_amqps(
    start_gateway: Any, node: RabbitNode, address: str, tls: BrokerTlsSettings, key: str
) -> tuple[str, list[str]]:
    """A gateway publishing to `address` with `tls`, once connected, publishes one task: its
    id, and the ids of what landed in images.queue (read over the node's plain listener)."""
    running = await start_gateway(replace_settings(make_settings(address), "broker", tls=tls))
    await wait_connected(running.gateway)

    task_id = await publish_image(running.channel, key)

    async with topology_at(node.url) as topology:
        landed = [m.message_id for m in await topology.drain("images.queue")]
    return task_id, landed


async def gateway_connections(node: RabbitNode) -> set[tuple[bool, str, str]]:
    """How the gateway's connections to the node are made: (TLS, mechanism, user)."""
    return {
        (c["ssl"], c["auth_mechanism"], c["user"])
        for c in await node.connections()
        if c["name"].startswith("task-gateway ")
    }


@pytest.mark.rabbitmq
async def test_a_gateway_publishes_over_amqps_with_a_ca_and_a_password(
    tls_node: RabbitNode, pki: Pki, start_gateway: Any
) -> None:
    """With the broker's CA and a password in the URL, tasks are published over TLS and land."""
    task_id, landed = await publish_over_amqps(
        start_gateway,
        tls_node,
        tls_node.amqps_url(),
        BrokerTlsSettings(ca_file=str(pki.ca)),
        "tls-password",
    )

    assert landed == [task_id]
    assert await gateway_connections(tls_node) == {(True, "PLAIN", tls_node.user)}


@pytest.mark.rabbitmq
async def test_a_client_certificate_logs_in_with_external(
    tls_node: RabbitNode, pki: Pki, start_gateway: Any
) -> None:
    """With a client certificate and no password, the gateway logs in with EXTERNAL as the
    certificate's user, and its tasks land."""
    tls = BrokerTlsSettings(
        ca_file=str(pki.ca), cert_file=str(pki.client_cert), key_file=str(pki.client_key)
    )
    task_id, landed = await publish_over_amqps(
        start_gateway, tls_node, tls_node.amqps_url(password=False), tls, "tls-certificate"
    )

    assert landed == [task_id]
    assert await gateway_connections(tls_node) == {(True, "EXTERNAL", CERTIFICATE_USER)}


@pytest.mark.rabbitmq
async def test_a_broker_signed_by_another_ca_is_refused_and_logged(
    tls_node: RabbitNode, pki: Pki, start_gateway: Any
) -> None:
    """A broker whose certificate the configured CA did not sign is never connected to: the
    gateway logs why, stays NOT_SERVING, and refuses tasks at once with UNAVAILABLE."""
    refused = asyncio.Event()

    def watch(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> Any:
        if event.get("event") == "cannot connect to RabbitMQ":
            refused.set()
        return event

    settings = replace_settings(
        make_settings(tls_node.amqps_url()),
        "broker",
        tls=BrokerTlsSettings(ca_file=str(pki.other_ca)),
    )
    with structlog.testing.capture_logs(processors=[watch]) as logs:
        running = await start_gateway(settings)
        async with asyncio.timeout(10):
            await refused.wait()
        health = await health_pb2_grpc.HealthStub(running.channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await publish_image(running.channel, "tls-wrong-ca")

    (first, *_) = [line for line in logs if line["event"] == "cannot connect to RabbitMQ"]
    assert "CERTIFICATE_VERIFY_FAILED" in first["error"]
    assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    assert await gateway_connections(tls_node) == set()


# --- files that cannot be used stop start-up ---------------------------------------------


@pytest.fixture
def bad_files(tmp_path: Path) -> dict[str, str]:
    not_pem = tmp_path / "not-a-certificate.pem"
    not_pem.write_text("not a certificate\n")
    return {"missing": str(tmp_path / "missing.pem"), "not_pem": str(not_pem)}


@pytest.mark.parametrize(
    ("files", "setting"),
    [
        ({"ca_file": "missing"}, "broker.tls.ca_file: cannot read"),
        ({"ca_file": "not_pem"}, "broker.tls.ca_file: "),
        ({"cert_file": "client_cert", "key_file": "missing"}, "broker.tls.key_file: cannot read"),
        ({"cert_file": "missing", "key_file": "client_key"}, "broker.tls.cert_file: cannot read"),
        # A certificate with a key that is not its own.
        ({"cert_file": "client_cert", "key_file": "server_key"}, "broker.tls.cert_file, "),
    ],
)
def test_a_tls_file_that_cannot_be_used_names_its_setting(
    pki: Pki, bad_files: dict[str, str], files: dict[str, str], setting: str
) -> None:
    """A missing, unreadable or mismatched [broker.tls] file is a ConfigError naming it."""
    ours = {name: str(getattr(pki, name)) for name in ("client_cert", "client_key", "server_key")}
    paths = ours | bad_files
    tls = BrokerTlsSettings(**{key: paths[value] for key, value in files.items()})
    settings = replace_settings(make_settings("amqps://127.0.0.1:5671/"), "broker", tls=tls)

    with pytest.raises(ConfigError) as caught:
        make_broker(settings)

    assert str(caught.value).startswith(setting), caught.value


async def test_an_unreadable_ca_file_stops_start_up_with_exit_2(tmp_path: Path) -> None:
    """`python -m gateway` with a CA file it cannot read exits 2 naming broker.tls.ca_file."""
    missing = tmp_path / "no-such-ca.pem"
    process = await start_gateway_process(
        {
            "TASK_GATEWAY__BROKER__ADDRESS": "amqps://127.0.0.1:5671/",
            "TASK_GATEWAY__BROKER__TLS__CA_FILE": str(missing),
            "TASK_GATEWAY__GRPC__ADDRESS": "127.0.0.1:0",
            "TASK_GATEWAY__SERVER__ADDRESS": "127.0.0.1:0",
        },
        "--workers",
        "1",
    )
    async with asyncio.timeout(30):
        output, _ = await process.communicate()

    assert process.returncode == 2
    assert (
        f"configuration error: broker.tls.ca_file: cannot read {missing}: "
        "No such file or directory" in output.decode()
    )
