"""TLS, mutual TLS, authentication and authorisation, on both transports.

Certificates are made in the test (trustme). The broker is the in-memory one: what landed is
read from its queues.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import hashlib
import os
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from grpc_status import rpc_status
from taskgateway_api.images.v1 import images_pb2, images_pb2_grpc
from taskgateway_api.taskgateway.v1 import gateway_pb2, gateway_pb2_grpc
from taskgateway_api.videos.v1 import videos_pb2, videos_pb2_grpc

from gateway.app.server import Gateway
from gateway.config import AdminSettings, AuthSettings, Settings, TlsSettings
from gateway.errors import ConfigError
from tests.conftest import make_settings, memory_broker, replace_settings
from tests.support.ports import free_port
from tests.support.waits import hang_guard

TOKEN = "s3cret-token-of-image-frontend"
OTHER_TOKEN = "a-token-nobody-was-given"
IMAGES = images_pb2.GenerateRequest(
    user_id="42", payload=images_pb2.GeneratePayload(model="m", prompt="p", image_name="n")
)
VIDEOS = videos_pb2.GenerateRequest(
    user_id="42", payload=videos_pb2.GeneratePayload(model="m", prompt="p", video_name="v")
)


def sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


CLIENTS = f"""
[[clients]]
name = "image-frontend"
token_sha256 = "{sha256(TOKEN)}"
mtls_identity = "image-frontend.internal"
task_types = ["images.*"]
user_ids = "^[0-9]+$"

[[clients]]
name = "throttled"
token_sha256 = "{sha256("throttled-token")}"
task_types = ["*"]
rate_per_second = 0.1
burst = 2
"""


@dataclasses.dataclass
class Pki:
    """A CA, the gateway's certificate from it, a client's, and a client's from another CA."""

    directory: Path
    ca: trustme.CA
    other_ca: trustme.CA

    def path(self, name: str) -> str:
        return str(self.directory / name)

    def client(self, identity: str, ca: trustme.CA | None = None) -> tuple[bytes, bytes]:
        """(key, certificate chain) of a client certificate naming `identity` (a SAN DNS)."""
        issued = (ca or self.ca).issue_cert(identity)
        return issued.private_key_pem.bytes(), issued.cert_chain_pems[0].bytes()

    def client_with_names(self, *names: x509.GeneralName) -> tuple[bytes, bytes]:
        """(key, certificate) of a client certificate from the CA with exactly these SANs and
        no CN: trustme makes only DNS, IP and user@host email SANs."""
        ca_certificate = x509.load_pem_x509_certificate(self.ca.cert_pem.bytes())
        ca_key = serialization.load_pem_private_key(self.ca.private_key_pem.bytes(), None)
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.ORGANIZATION_NAME, "test")]))
            .issuer_name(ca_certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        return (
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            certificate.public_bytes(serialization.Encoding.PEM),
        )

    def server_files(self, ca: trustme.CA, prefix: str) -> TlsSettings:
        issued = ca.issue_cert("localhost", "127.0.0.1")
        issued.cert_chain_pems[0].write_to_path(self.path(f"{prefix}.crt"))
        issued.private_key_pem.write_to_path(self.path(f"{prefix}.key"))
        return TlsSettings(self.path(f"{prefix}.crt"), self.path(f"{prefix}.key"))


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca, other = trustme.CA(), trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    other.cert_pem.write_to_path(str(tmp_path / "other-ca.pem"))
    (tmp_path / "clients.toml").write_text(CLIENTS)
    return Pki(tmp_path, ca, other)


def secured(pki: Pki, *, mutual: bool = False, auth: bool = False, admin: bool = False) -> Settings:
    """Settings with TLS on both listeners (mutual with `mutual`), and auth and admin on."""
    tls = pki.server_files(pki.ca, "server")
    if mutual:
        tls = dataclasses.replace(tls, client_ca_file=pki.path("ca.pem"))
    settings = make_settings()
    settings = replace_settings(settings, "grpc", tls=tls)
    settings = replace_settings(settings, "server", tls=tls)
    if auth:
        settings = dataclasses.replace(
            settings, auth=AuthSettings("required", pki.path("clients.toml"))
        )
    if admin:
        settings = dataclasses.replace(settings, admin=AdminSettings(f"127.0.0.1:{free_port()}"))
    return settings


def tls_channel(
    pki: Pki, port: int, client: tuple[bytes, bytes] | None = None, ca: str = "ca.pem"
) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=Path(pki.path(ca)).read_bytes(),
        private_key=client[0] if client else None,
        certificate_chain=client[1] if client else None,
    )
    return grpc.aio.secure_channel(f"localhost:{port}", credentials)


def https(pki: Pki, client: tuple[bytes, bytes] | None = None, ca: str = "ca.pem") -> Any:
    context = ssl.create_default_context(cafile=pki.path(ca))
    if client is not None:
        key, chain = pki.directory / "client.key", pki.directory / "client.crt"
        key.write_bytes(client[0])
        chain.write_bytes(client[1])
        context.load_cert_chain(str(chain), str(key))
    return aiohttp.TCPConnector(ssl=context, force_close=True)


async def _code(call: Any) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


# --- TLS -------------------------------------------------------------------------------------


async def test_tls_listeners_answer_over_tls_and_refuse_plaintext(
    start_gateway: Any, pki: Pki
) -> None:
    """gRPC and REST answer over TLS; a plaintext gRPC call or HTTP request gets nowhere."""
    gateway = (await start_gateway(secured(pki))).gateway
    assert gateway.grpc_port is not None

    async with tls_channel(pki, gateway.grpc_port) as channel:
        answer = await images_pb2_grpc.ImagesServiceStub(channel).Generate(IMAGES, timeout=10)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as plain:
        plaintext = await _code(
            images_pb2_grpc.ImagesServiceStub(plain).Generate(IMAGES, timeout=5)
        )
    async with (
        aiohttp.ClientSession(connector=https(pki)) as http,
        http.get(f"https://localhost:{gateway.http_port}/healthz") as ok,
    ):
        assert ok.status == 200
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientError):
            async with http.get(f"http://127.0.0.1:{gateway.http_port}/healthz"):
                pass

    assert answer.task_key.startswith("42:image-generation:")
    assert plaintext == grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls_wants_a_client_certificate_of_the_ca(
    start_gateway: Any, pki: Pki
) -> None:
    """With client_ca_file: no client certificate fails, one from another CA fails, a good one
    calls, over gRPC and over HTTPS."""
    gateway = (await start_gateway(secured(pki, mutual=True))).gateway
    assert gateway.grpc_port is not None
    good = pki.client("someone.internal")
    stranger = pki.client("someone.internal", pki.other_ca)

    codes = []
    for client in (None, stranger, good):
        async with tls_channel(pki, gateway.grpc_port, client) as channel:
            codes.append(
                await _code(images_pb2_grpc.ImagesServiceStub(channel).Generate(IMAGES, timeout=5))
            )
    statuses = []
    for client in (None, stranger, good):
        async with aiohttp.ClientSession(connector=https(pki, client)) as http:
            try:
                async with http.get(f"https://localhost:{gateway.http_port}/healthz") as answer:
                    statuses.append(answer.status)
            except aiohttp.ClientError:
                statuses.append(None)

    assert codes == [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.OK]
    assert statuses == [None, None, 200]


async def test_a_certificate_replaced_on_disk_is_served_to_new_connections(
    start_gateway: Any, pki: Pki
) -> None:
    """Certificate files replaced by a rename (as Kubernetes does) are served to the next
    connections on both listeners, without a restart."""
    settings = secured(pki)
    gateway = (await start_gateway(settings)).gateway
    assert gateway.grpc_port is not None
    renewed = pki.server_files(pki.other_ca, "renewed")  # from another CA: easy to tell apart
    os.replace(renewed.cert_file, settings.grpc.tls.cert_file)
    os.replace(renewed.key_file, settings.grpc.tls.key_file)

    # The HTTP listener looks at its files every second.
    async with hang_guard("both listeners serving the renewed certificate"):
        while True:
            async with tls_channel(pki, gateway.grpc_port, ca="other-ca.pem") as channel:
                grpc_code = await _code(
                    images_pb2_grpc.ImagesServiceStub(channel).Generate(IMAGES, timeout=5)
                )
            try:
                async with (
                    aiohttp.ClientSession(connector=https(pki, ca="other-ca.pem")) as http,
                    http.get(f"https://localhost:{gateway.http_port}/healthz") as answer,
                ):
                    http_status = answer.status
            except aiohttp.ClientError:
                http_status = None
            if grpc_code == grpc.StatusCode.OK and http_status == 200:
                break
            await asyncio.sleep(0.2)


async def test_an_unreadable_certificate_stops_start_up_naming_the_setting(pki: Pki) -> None:
    """A missing key file is a ConfigError naming grpc.tls.key_file."""
    settings = secured(pki)
    settings = replace_settings(
        settings,
        "grpc",
        tls=dataclasses.replace(settings.grpc.tls, key_file=pki.path("missing.key")),
    )

    with pytest.raises(ConfigError, match=r"grpc\.tls\.key_file: cannot read .*missing\.key"):
        Gateway(settings, broker=memory_broker())


async def test_the_admin_listener_answers_probes_while_mutual_tls_is_required(
    start_gateway: Any, pki: Pki
) -> None:
    """Plaintext /healthz, /readyz and /metrics on admin.address, no client certificate."""
    gateway = (await start_gateway(secured(pki, mutual=True, admin=True))).gateway

    async with aiohttp.ClientSession() as http:
        statuses = {}
        for path in ("/healthz", "/readyz", "/metrics", "/api/v1/task-types"):
            async with http.get(f"http://127.0.0.1:{gateway.admin_port}{path}") as answer:
                statuses[path] = answer.status

    assert statuses == {"/healthz": 200, "/readyz": 200, "/metrics": 200, "/api/v1/task-types": 404}


# --- authentication and authorisation --------------------------------------------------------


@pytest.fixture
async def guarded(start_gateway: Any, pki: Pki) -> Any:
    """A gateway requiring auth (plaintext), its broker, and a way to call it."""
    broker = memory_broker()
    settings = dataclasses.replace(
        make_settings(), auth=AuthSettings("required", pki.path("clients.toml"))
    )
    running = await start_gateway(settings, broker)
    return running.gateway, broker, running.channel


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


async def rest_generate(
    http: aiohttp.ClientSession, gateway: Gateway, token: str
) -> tuple[int, Mapping[str, str]]:
    """POST one images.generate task over REST with `token`; the answer's status and headers."""
    async with http.post(
        f"http://127.0.0.1:{gateway.http_port}/api/v1/images/generate",
        json={"user_id": "42", "payload": {"model": "m", "prompt": "p", "image_name": "n"}},
        headers={"Authorization": f"Bearer {token}"},
    ) as answer:
        return answer.status, answer.headers


async def test_no_token_and_an_unknown_token_are_unauthenticated(
    guarded: Any, http: aiohttp.ClientSession
) -> None:
    """UNAUTHENTICATED / 401 with WWW-Authenticate: Bearer, saying what is missing."""
    gateway, broker, channel = guarded
    stub = images_pb2_grpc.ImagesServiceStub(channel)
    errors = []
    for metadata in ((), bearer(OTHER_TOKEN)):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Generate(IMAGES, metadata=metadata, timeout=5)
        errors.append((caught.value.code(), caught.value.details()))
    status, headers = await rest_generate(http, gateway, OTHER_TOKEN)
    challenge = headers.get("WWW-Authenticate")

    assert errors == [
        (grpc.StatusCode.UNAUTHENTICATED, "no bearer token and no client certificate"),
        (grpc.StatusCode.UNAUTHENTICATED, "token not recognised"),
    ]
    assert (status, challenge) == (401, "Bearer")
    assert broker.messages("images.queue") == []


async def test_a_rest_caller_without_a_known_token_is_refused_before_its_body_is_read(
    guarded: Any,
) -> None:
    """Headers announcing a megabyte, and no body: 401 at once, not a wait for the body (which
    would end in 408 after the keep-alive timeout)."""
    gateway, broker, _ = guarded
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.http_port)
    writer.write(
        b"POST /api/v1/broker/publish HTTP/1.1\r\nHost: gateway\r\n"
        b"Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n"
    )
    await writer.drain()
    async with hang_guard("an answer to a request whose body never came"):
        status_line = await reader.readline()
    writer.close()

    assert status_line.startswith(b"HTTP/1.1 401 "), status_line
    assert broker.messages("images.queue") == []


async def test_a_client_publishes_only_its_task_types_and_user_ids(guarded: Any) -> None:
    """images.* only: videos.generate and a user_id outside ^[0-9]+$ are PERMISSION_DENIED,
    naming the client, and nothing of them lands."""
    _, broker, channel = guarded
    images, videos = (
        images_pb2_grpc.ImagesServiceStub(channel),
        videos_pb2_grpc.VideosServiceStub(channel),
    )
    answer = await images.Generate(IMAGES, metadata=bearer(TOKEN), timeout=5)
    refusals = []
    for call in (
        videos.Generate(VIDEOS, metadata=bearer(TOKEN), timeout=5),
        images.Generate(
            images_pb2.GenerateRequest(user_id="not-digits", payload=IMAGES.payload),
            metadata=bearer(TOKEN),
            timeout=5,
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        refusals.append((caught.value.code(), caught.value.details()))

    assert answer.task_key.startswith("42:")
    assert refusals == [
        (
            grpc.StatusCode.PERMISSION_DENIED,
            "client 'image-frontend' may not publish 'videos.generate'",
        ),
        (
            grpc.StatusCode.PERMISSION_DENIED,
            "client 'image-frontend' may not publish for this user_id",
        ),
    ]
    assert len(broker.messages("images.queue")) == 1
    assert broker.messages("videos.queue") == []


async def test_in_a_batch_only_the_forbidden_entry_fails(guarded: Any) -> None:
    """A batch of an allowed and a forbidden task: one key, one PERMISSION_DENIED."""
    _, broker, channel = guarded
    allowed, forbidden = gateway_pb2.TaskEntry(), gateway_pb2.TaskEntry()
    allowed.typed.Pack(IMAGES)
    forbidden.typed.Pack(VIDEOS)

    answer = await gateway_pb2_grpc.TaskGatewayServiceStub(channel).PublishBatch(
        gateway_pb2.PublishBatchRequest(entries=[allowed, forbidden]),
        metadata=bearer(TOKEN),
        timeout=5,
    )

    assert answer.results[0].task_key
    assert answer.results[1].error.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
    assert len(broker.messages("images.queue")) == 1
    assert broker.messages("videos.queue") == []


async def test_the_catalog_and_errors_name_only_what_the_client_may_publish(guarded: Any) -> None:
    """ListTaskTypes lists images.* only; an unknown task type lists only those; the schema of
    a task type the client may not publish is NOT_FOUND, as an unknown one."""
    _, _, channel = guarded
    stub = gateway_pb2_grpc.TaskGatewayServiceStub(channel)

    catalog = await stub.ListTaskTypes(
        gateway_pb2.ListTaskTypesRequest(), metadata=bearer(TOKEN), timeout=5
    )
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await stub.Publish(
            gateway_pb2.PublishRequest(user_id="42", task_type="images.upscale"),
            metadata=bearer(TOKEN),
            timeout=5,
        )
    with pytest.raises(grpc.aio.AioRpcError) as schema:
        await stub.GetTaskTypeSchema(
            gateway_pb2.GetTaskTypeSchemaRequest(task_type="videos.generate"),
            metadata=bearer(TOKEN),
            timeout=5,
        )

    assert [t.task_type for t in catalog.task_types] == ["images.edit", "images.generate"]
    assert "known task types: images.edit, images.generate" in unknown.value.details()
    assert "videos" not in unknown.value.details()
    assert schema.value.code() == grpc.StatusCode.NOT_FOUND
    assert "videos" not in schema.value.details().split(";")[1]


async def test_reflection_needs_a_client_and_health_does_not(guarded: Any) -> None:
    """Reflection is UNAUTHENTICATED without a token and answers with one; health is open."""
    gateway, _, channel = guarded
    reflect = channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    request = reflection_pb2.ServerReflectionRequest(list_services="")

    with pytest.raises(grpc.aio.AioRpcError) as anonymous:
        async for _ in reflect(iter([request]), timeout=5):
            pass
    listed = [r async for r in reflect(iter([request]), metadata=bearer(TOKEN), timeout=5)]
    health = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(), timeout=5
    )

    assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "images.v1.ImagesService" in [s.name for s in listed[0].list_services_response.service]
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    async with aiohttp.ClientSession() as http:
        for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"):
            async with http.get(f"http://127.0.0.1:{gateway.http_port}{path}") as answer:
                assert answer.status == 200, path


async def test_a_client_certificate_names_the_client(start_gateway: Any, pki: Pki) -> None:
    """Under mutual TLS and auth, a certificate whose SAN is a client's mtls_identity is that
    client, with its permissions; one naming no client is UNAUTHENTICATED."""
    gateway = (await start_gateway(secured(pki, mutual=True, auth=True))).gateway
    assert gateway.grpc_port is not None
    codes = {}
    for identity in ("image-frontend.internal", "nobody.internal"):
        async with tls_channel(pki, gateway.grpc_port, pki.client(identity)) as channel:
            videos = videos_pb2_grpc.VideosServiceStub(channel)
            images = images_pb2_grpc.ImagesServiceStub(channel)
            codes[identity] = (
                await _code(images.Generate(IMAGES, timeout=5)),
                await _code(videos.Generate(VIDEOS, timeout=5)),
            )

    assert codes == {
        "image-frontend.internal": (grpc.StatusCode.OK, grpc.StatusCode.PERMISSION_DENIED),
        "nobody.internal": (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.UNAUTHENTICATED),
    }


async def test_only_a_dns_name_of_a_certificate_names_the_client(
    start_gateway: Any, pki: Pki
) -> None:
    """A client's mtls_identity matches a SAN DNS name only, over gRPC as over HTTPS: the same
    text as an email or URI SAN is no identity, and the call is UNAUTHENTICATED / 401."""
    gateway = (await start_gateway(secured(pki, mutual=True, auth=True))).gateway
    assert gateway.grpc_port is not None
    certificates = {
        "dns": pki.client_with_names(x509.DNSName("image-frontend.internal")),
        "email": pki.client_with_names(x509.RFC822Name("image-frontend.internal")),
        "uri": pki.client_with_names(x509.UniformResourceIdentifier("image-frontend.internal")),
    }
    codes, statuses = {}, {}
    for kind, client in certificates.items():
        async with tls_channel(pki, gateway.grpc_port, client) as channel:
            catalog = gateway_pb2_grpc.TaskGatewayServiceStub(channel).ListTaskTypes(
                gateway_pb2.ListTaskTypesRequest(), timeout=5
            )
            codes[kind] = await _code(catalog)
        async with (
            aiohttp.ClientSession(connector=https(pki, client)) as http,
            http.get(f"https://localhost:{gateway.http_port}/api/v1/task-types") as answer,
        ):
            statuses[kind] = answer.status

    assert codes == {
        "dns": grpc.StatusCode.OK,
        "email": grpc.StatusCode.UNAUTHENTICATED,
        "uri": grpc.StatusCode.UNAUTHENTICATED,
    }
    assert statuses == {"dns": 200, "email": 401, "uri": 401}


async def test_over_its_quota_a_client_is_told_when_to_come_back(
    guarded: Any, http: aiohttp.ClientSession
) -> None:
    """Rate 0.1/s, burst 2: the third task at once is RESOURCE_EXHAUSTED with RetryInfo, and
    over REST 429 with Retry-After; nothing of the refused lands.

    A token comes back only every 10 s, far longer than the test takes, so none is refilled
    during it however slow the machine is."""
    gateway, broker, channel = guarded
    stub = images_pb2_grpc.ImagesServiceStub(channel)
    token = bearer("throttled-token")
    for _ in range(2):
        await stub.Generate(IMAGES, metadata=token, timeout=5)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Generate(IMAGES, metadata=token, timeout=5)
    status, headers = await rest_generate(http, gateway, "throttled-token")
    retry_after = headers.get("Retry-After")

    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    details = rpc_status.from_call(caught.value)
    assert details is not None
    (packed,) = details.details
    info = error_details_pb2.RetryInfo()
    assert packed.Unpack(info)
    assert 0 < info.retry_delay.ToNanoseconds() <= 10_000_000_000  # a token every 10 s
    assert status == 429
    assert retry_after is not None
    assert 1 <= int(retry_after) <= 10  # whole seconds, rounded up
    assert len(broker.messages("images.queue")) == 2
