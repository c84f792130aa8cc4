"""The production topology on a real RabbitMQ: quorum queues, dead-lettering, least privilege.

deploy/rabbitmq/definitions.production.json is imported with `rabbitmqctl import_definitions`
into a vhost of its own (the file's objects are in `/`; a rewritten copy names the test
vhost), and deploy/rabbitmq/users.sh creates the gateway's and a consumer's users with test
passwords, as an operator would. Without a reachable broker these tests skip on a laptop and
fail in CI, as the integration suite does.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shlex
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aio_pika
import aiormq
import pytest
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractIncomingMessage,
    AbstractQueue,
)
from taskgateway_api.images.v1 import images_pb2, images_pb2_grpc

from tests.conftest import BASE_URL, GatewayFactory, make_settings, unavailable, wait_connected
from tests.deploy.dockerfile import ROOT

pytestmark = pytest.mark.rabbitmq

RABBITMQ = ROOT / "deploy" / "rabbitmq"
PRODUCTION = json.loads((RABBITMQ / "definitions.production.json").read_text())


def _run(command: list[str], stdin: str | None = None, **env: str) -> str:
    """Run a command; its output, or an error that carries what it printed."""
    done = subprocess.run(
        command,
        input=stdin,
        env=os.environ | env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(command)} exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def _rabbitmqctl(*args: str, stdin: str | None = None) -> str:
    return _run(["rabbitmqctl", "-q", *args], stdin)


def in_vhost(definitions: dict[str, Any], vhost: str) -> dict[str, Any]:
    """The definitions with every object moved from vhost `/` to `vhost`."""
    moved = {
        kind: [item | {"vhost": vhost} if "vhost" in item else item for item in items]
        for kind, items in definitions.items()
    }
    moved["vhosts"] = [{"name": vhost}]
    return moved


@dataclass
class Production:
    """A vhost loaded from the production file, and the URLs of its users."""

    vhost: str
    admin_url: str
    gateway_url: str
    consumer_url: str


def _url(user: str, password: str, vhost: str) -> str:
    base = BASE_URL.with_user(user).with_password(password)
    return str(base.with_path("/" + quote(vhost, safe="")))


@pytest.fixture(scope="module")
def production() -> Iterator[Production]:
    """A vhost loaded from definitions.production.json, with a gateway and a consumer user."""
    try:
        _rabbitmqctl("status")
    except (RuntimeError, subprocess.SubprocessError, OSError) as exc:
        unavailable("RabbitMQ tests", f"rabbitmqctl cannot reach the node: {exc}")
    suffix = uuid.uuid4().hex[:8]
    vhost = f"task-gateway-deploy-{suffix}"
    users = {"gateway": f"task-gateway-test-{suffix}", "images": f"image-generation-test-{suffix}"}
    passwords = {role: secrets.token_urlsafe(16) for role in users}
    admin = BASE_URL.user or "guest"
    try:
        _rabbitmqctl("add_vhost", vhost)
        _rabbitmqctl("set_permissions", "-p", vhost, admin, ".*", ".*", ".*")
        # On standard input: the CLI may run as the rabbitmq user, who cannot read pytest's tmp.
        _rabbitmqctl("import_definitions", stdin=json.dumps(in_vhost(PRODUCTION, vhost)))
        for role, user in users.items():
            _run(
                ["sh", str(RABBITMQ / "users.sh"), role, user],
                passwords[role],
                RABBITMQ_VHOST=vhost,
            )
        yield Production(
            vhost=vhost,
            admin_url=_url(admin, BASE_URL.password or "guest", vhost),
            gateway_url=_url(users["gateway"], passwords["gateway"], vhost),
            consumer_url=_url(users["images"], passwords["images"], vhost),
        )
    finally:
        subprocess.run(
            ["rabbitmqctl", "-q", "delete_vhost", vhost], capture_output=True, timeout=60
        )
        for user in users.values():
            subprocess.run(
                ["rabbitmqctl", "-q", "delete_user", user], capture_output=True, timeout=60
            )


class Admin:
    """The admin user's view of the vhost: what is in the queues, what exists, what routes."""

    def __init__(self, connection: AbstractConnection, channel: AbstractChannel) -> None:
        self.connection = connection
        self.channel = channel

    async def drain(self, queue: str) -> list[bytes]:
        """The bodies in a queue, consumed."""
        declared = await self.channel.declare_queue(queue, passive=True)
        bodies = []
        while (message := await declared.get(no_ack=True, fail=False)) is not None:
            bodies.append(message.body)
        return bodies

    async def next_message(self, queue: str, timeout: float = 10.0) -> AbstractIncomingMessage:
        """The next message delivered from a queue (dead-lettering happens after the reject)."""
        declared = await self.channel.declare_queue(queue, passive=True)
        async with declared.iterator(no_ack=True) as messages:
            async with asyncio.timeout(timeout):
                async for message in messages:
                    return message
        raise AssertionError(f"{queue}: the consumer was cancelled before a message came")

    async def exists(self, name: str) -> bool:
        """Whether an exchange or a queue of that name exists."""
        for declare in ("get_exchange", "declare_queue"):
            # A failed passive declare closes its channel: a spare one each time.
            channel = await self.connection.channel()
            try:
                if declare == "get_exchange":
                    await channel.get_exchange(name)
                else:
                    await channel.declare_queue(name, passive=True)
                return True
            except aiormq.exceptions.ChannelNotFoundEntity:
                continue
        return False

    async def routes(self, exchange: str, routing_key: str) -> bool:
        """Whether a mandatory publish there reaches a queue (it is returned otherwise)."""
        channel = await self.connection.channel(publisher_confirms=True, on_return_raises=True)
        try:
            target = await channel.get_exchange(exchange)
            await target.publish(aio_pika.Message(b"probe"), routing_key, mandatory=True)
        except aio_pika.exceptions.DeliveryError:
            return False
        finally:
            await channel.close()
        return True


@pytest.fixture
async def admin(production: Production) -> AsyncIterator[Admin]:
    """The admin user, every queue of the file purged for the test."""
    connection = await aio_pika.connect(production.admin_url)
    try:
        channel = await connection.channel()
        for queue in PRODUCTION["queues"]:
            await (await channel.declare_queue(queue["name"], passive=True)).purge()
        yield Admin(connection, channel)
    finally:
        await connection.close()


@pytest.fixture
async def as_gateway(production: Production) -> AsyncIterator[AbstractConnection]:
    connection = await aio_pika.connect(production.gateway_url)
    yield connection
    await connection.close()


@pytest.fixture
async def as_consumer(production: Production) -> AsyncIterator[AbstractConnection]:
    connection = await aio_pika.connect(production.consumer_url)
    yield connection
    await connection.close()


async def publish(connection: AbstractConnection, exchange: str, routing_key: str) -> bytes:
    """Publish one persistent, mandatory message with confirms; its body."""
    channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
    body = json.dumps({"task_id": str(uuid.uuid4())}).encode()
    target = await channel.get_exchange(exchange)  # a passive declare
    confirm = await target.publish(
        aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
        routing_key,
        mandatory=True,
    )
    assert isinstance(confirm, aiormq.spec.Basic.Ack)
    await channel.close()
    return body


def test_the_file_loads_quorum_queues_under_the_dead_lettering_policies(
    production: Production,
) -> None:
    """RabbitMQ loads the file: every queue is a quorum queue, each task queue under its policy."""
    listed = _rabbitmqctl(
        "list_queues", "-p", production.vhost, "name", "type", "policy", "--no-table-headers"
    )
    queues = {name: rest for name, *rest in (line.split("\t") for line in listed.splitlines())}
    policies = {p["pattern"]: p for p in PRODUCTION["policies"]}

    assert queues == {
        "images.queue": ["quorum", "images-tasks"],
        "videos.queue": ["quorum", "videos-tasks"],
        "images.dlq": ["quorum", ""],
        "videos.dlq": ["quorum", ""],
    }
    for domain in ("images", "videos"):
        definition = policies[f"^{domain}\\.queue$"]["definition"]
        assert definition["dead-letter-exchange"] == f"{domain}.dlx"
        assert definition["dead-letter-strategy"] == "at-least-once"
        assert definition["overflow"] == "reject-publish"  # at-least-once needs it
        assert definition["delivery-limit"] > 0
        assert definition["max-length"] > 0


async def test_the_gateway_user_publishes_with_confirms_to_each_task_exchange(
    admin: Admin, as_gateway: AbstractConnection
) -> None:
    """The gateway's user passive-declares each task exchange and gets a confirm per publish."""
    images = await publish(as_gateway, "images.tasks", "images.generate")
    videos = await publish(as_gateway, "videos.tasks", "videos.animate")

    assert await admin.drain("images.queue") == [images]
    assert await admin.drain("videos.queue") == [videos]


# What the gateway's user must not do. Each opens objects with passive declares (which need
# no permission) and then tries one operation on them.


async def _queue(channel: AbstractChannel, name: str = "images.queue") -> AbstractQueue:
    return await channel.declare_queue(name, passive=True)


async def _declare_exchange(channel: AbstractChannel) -> None:
    await channel.declare_exchange("rogue.tasks", durable=True)


async def _redeclare_task_exchange(channel: AbstractChannel) -> None:
    await channel.declare_exchange("images.tasks", aio_pika.ExchangeType.DIRECT, durable=True)


async def _declare_queue(channel: AbstractChannel) -> None:
    await channel.declare_queue("rogue.queue", durable=True)


async def _bind_queue(channel: AbstractChannel) -> None:
    await (await _queue(channel)).bind("images.tasks", "rogue")


async def _bind_exchanges(channel: AbstractChannel) -> None:
    images = await channel.get_exchange("images.tasks")
    await images.bind(await channel.get_exchange("videos.tasks"), "videos.generate")


async def _delete_exchange(channel: AbstractChannel) -> None:
    await channel.exchange_delete("images.tasks")


async def _delete_queue(channel: AbstractChannel) -> None:
    await channel.queue_delete("images.queue")


async def _purge_queue(channel: AbstractChannel) -> None:
    await (await _queue(channel)).purge()


async def _get(channel: AbstractChannel) -> None:
    await (await _queue(channel)).get(fail=False)


async def _consume(channel: AbstractChannel) -> None:
    async def ignore(message: AbstractIncomingMessage) -> None:
        pass

    await (await _queue(channel)).consume(ignore)


async def _publish_to_dead_letter_exchange(channel: AbstractChannel) -> None:
    dlx = await channel.get_exchange("images.dlx")
    await dlx.publish(aio_pika.Message(b"{}"), "images.generate")


async def _publish_to_default_exchange(channel: AbstractChannel) -> None:
    await channel.default_exchange.publish(aio_pika.Message(b"{}"), "images.queue")


REFUSED: dict[str, Callable[[AbstractChannel], Awaitable[None]]] = {
    "declare an exchange": _declare_exchange,
    "re-declare a task exchange": _redeclare_task_exchange,
    "declare a queue": _declare_queue,
    "bind a queue": _bind_queue,
    "bind an exchange to an exchange": _bind_exchanges,
    "delete an exchange": _delete_exchange,
    "delete a queue": _delete_queue,
    "purge a queue": _purge_queue,
    "get from a queue": _get,
    "consume from a queue": _consume,
    "publish to a dead-letter exchange": _publish_to_dead_letter_exchange,
    "publish to the default exchange": _publish_to_default_exchange,
}


@pytest.mark.parametrize("operation", list(REFUSED))
async def test_the_gateway_user_is_refused(
    operation: str, admin: Admin, as_gateway: AbstractConnection
) -> None:
    """The gateway's user cannot configure, bind, delete, read or write outside its exchanges."""
    task = await publish(as_gateway, "images.tasks", "images.generate")
    channel = await as_gateway.channel()

    with pytest.raises(aiormq.exceptions.ChannelAccessRefused, match="ACCESS_REFUSED"):
        await REFUSED[operation](channel)

    # Nothing changed: no new object, no new binding, the task still queued, nothing else sent.
    assert not await admin.exists("rogue.tasks")
    assert not await admin.exists("rogue.queue")
    assert not await admin.routes("images.tasks", "rogue")
    assert await admin.routes("videos.tasks", "videos.generate")
    assert await admin.drain("images.queue") == [task]
    assert await admin.drain("videos.queue") == [b"probe"]
    assert await admin.drain("images.dlq") == []


async def test_the_gateway_publishes_as_its_least_privileged_user(
    start_gateway: GatewayFactory, production: Production, admin: Admin
) -> None:
    """With only its user's rights the gateway is ready, and a task lands in images.queue."""
    running = await start_gateway(make_settings(production.gateway_url))
    await wait_connected(running.gateway)

    readiness = await running.gateway.readiness()
    answer = await images_pb2_grpc.ImagesServiceStub(running.channel).Generate(
        images_pb2.GenerateRequest(
            user_id="7",
            payload=images_pb2.GeneratePayload(model="m", prompt="a harbour", image_name="h"),
        ),
        timeout=10,
    )

    assert readiness is None
    (body,) = await admin.drain("images.queue")
    message = json.loads(body)
    assert answer.task_key == f"7:image-generation:{message['task_id']}"
    assert message["payload"] == {"model": "m", "prompt": "a harbour", "image_name": "h"}


async def test_a_task_its_consumer_rejects_is_dead_lettered(
    admin: Admin, as_gateway: AbstractConnection, as_consumer: AbstractConnection
) -> None:
    """A task the consumer rejects without requeueing moves to images.dlq, with its x-death."""
    task = await publish(as_gateway, "images.tasks", "images.edit")
    channel = await as_consumer.channel()

    message = await (await _queue(channel)).get()
    await message.reject(requeue=False)

    dead = await admin.next_message("images.dlq")
    assert dead.body == task
    assert dead.headers["x-first-death-reason"] == "rejected"
    assert dead.headers["x-first-death-queue"] == "images.queue"
    assert await admin.drain("images.queue") == []


async def test_a_task_redelivered_past_the_delivery_limit_is_dead_lettered(
    admin: Admin, as_gateway: AbstractConnection, as_consumer: AbstractConnection
) -> None:
    """A task requeued more often than the policy's delivery-limit leaves for images.dlq."""
    limit = {p["name"]: p for p in PRODUCTION["policies"]}["images-tasks"]["definition"][
        "delivery-limit"
    ]
    task = await publish(as_gateway, "images.tasks", "images.generate")
    channel = await as_consumer.channel()
    queue = await _queue(channel)

    deliveries = 0
    while (message := await queue.get(fail=False)) is not None:
        deliveries += 1
        await message.nack(requeue=True)

    dead = await admin.next_message("images.dlq")
    assert dead.body == task
    assert dead.headers["x-first-death-reason"] == "delivery_limit"
    assert deliveries == limit + 1


@pytest.mark.parametrize(
    "operation",
    ["get from another domain's queue", "publish to a task exchange", "declare a queue"],
)
async def test_the_consumer_user_is_refused(
    operation: str, admin: Admin, as_consumer: AbstractConnection
) -> None:
    """A domain's consumer reads its own queue only: no other queue, no publishing, no declaring."""
    channel = await as_consumer.channel()
    attempts: dict[str, Callable[[], Awaitable[Any]]] = {
        "get from another domain's queue": lambda: _get_videos(channel),
        "publish to a task exchange": lambda: _publish_task(channel),
        "declare a queue": lambda: _declare_queue(channel),
    }

    with pytest.raises(aiormq.exceptions.ChannelAccessRefused, match="ACCESS_REFUSED"):
        await attempts[operation]()

    assert await admin.drain("images.queue") == []
    assert not await admin.exists("rogue.queue")


async def _get_videos(channel: AbstractChannel) -> None:
    await (await _queue(channel, "videos.queue")).get(fail=False)


async def _publish_task(channel: AbstractChannel) -> None:
    exchange = await channel.get_exchange("images.tasks")
    await exchange.publish(aio_pika.Message(b"{}"), "images.generate")
