"""One contract, two brokers: the in-memory broker must do what RabbitMQ does.

Every test runs against `MemoryBroker` and against `RabbitBroker` on a real RabbitMQ (in the
test vhost; in CI the RabbitMQ run fails rather than skips without a broker). The topology is
the contract's own, loaded into both: direct, topic and exchange-to-exchange routing, a
`reject-publish` queue, a drop-head queue.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aio_pika
import pytest

from gateway.broker import Broker, Envelope
from gateway.broker.memory import Definitions, MemoryBroker
from gateway.broker.rabbit import RabbitBroker
from gateway.errors import Code, GatewayError
from tests.conftest import wait_broker_connected

EXCHANGES = {"contract.direct": "direct", "contract.topic": "topic", "contract.front": "direct"}
QUEUES: dict[str, dict[str, Any]] = {
    "contract.one": {},
    "contract.two": {},
    "contract.full": {"x-max-length": 1, "x-overflow": "reject-publish"},
    "contract.head": {"x-max-length": 2},
    "contract.images": {},
    "contract.generate": {},
}
# (source, destination, routing key, destination type)
BINDINGS = [
    ("contract.direct", "contract.one", "one", "queue"),
    ("contract.direct", "contract.two", "both", "queue"),
    ("contract.direct", "contract.full", "both", "queue"),
    ("contract.direct", "contract.full", "full", "queue"),
    ("contract.direct", "contract.head", "head", "queue"),
    ("contract.topic", "contract.images", "images.#", "queue"),
    ("contract.topic", "contract.generate", "*.generate", "queue"),
    ("contract.front", "contract.topic", "images.generate", "exchange"),
]


def definitions() -> dict[str, Any]:
    """The contract's topology in RabbitMQ's definitions format."""
    return {
        "exchanges": [{"name": n, "vhost": "/", "type": t} for n, t in EXCHANGES.items()],
        "queues": [{"name": n, "vhost": "/", "arguments": a} for n, a in QUEUES.items()],
        "bindings": [
            {
                "source": s,
                "destination": d,
                "routing_key": k,
                "destination_type": t,
                "vhost": "/",
            }
            for s, d, k, t in BINDINGS
        ],
    }


def envelope(exchange: str, routing_key: str, body: str = "{}") -> Envelope:
    return Envelope(
        exchange=exchange,
        routing_key=routing_key,
        body=body.encode(),
        message_id=f"id-{body}",
        type=routing_key,
        timestamp=datetime(2026, 1, 1, tzinfo=UTC),
        app_id="contract",
        headers={"task_key": f"u:s:id-{body}"},
    )


@dataclass
class Stored:
    body: str
    message_id: str
    task_key: str


@dataclass
class Subject:
    """A broker under the contract, and a way to read what landed in a queue."""

    broker: Broker
    read: Callable[[str], Awaitable[list[Stored]]]


async def _memory() -> AsyncIterator[Subject]:
    broker = MemoryBroker(Definitions.parse(definitions()))
    await broker.start()

    async def read(queue: str) -> list[Stored]:
        return [
            Stored(m.body.decode(), m.message_id, m.headers["task_key"])
            for m in broker.messages(queue)
        ]

    yield Subject(broker, read)
    await broker.close()


async def _rabbitmq(url: str) -> AsyncIterator[Subject]:
    connection = await aio_pika.connect(url)
    channel = await connection.channel()
    declared = {
        name: await channel.declare_exchange(name, kind, durable=True)
        for name, kind in EXCHANGES.items()
    }
    queues = {}
    for name, arguments in QUEUES.items():
        queues[name] = await channel.declare_queue(name, durable=True, arguments=arguments)
        await queues[name].purge()
    for source, destination, key, kind in BINDINGS:
        if kind == "queue":
            await queues[destination].bind(declared[source], key)
        else:
            await declared[destination].bind(declared[source], key)
    broker = RabbitBroker(
        [url],
        heartbeat_seconds=10,
        connect_timeout_seconds=2,
        reconnect_max_backoff_seconds=0.2,
        missing_exchange_seconds=0,
    )
    await broker.start()
    await wait_broker_connected(broker)

    async def read(queue: str) -> list[Stored]:
        stored = []
        while (message := await queues[queue].get(no_ack=True, fail=False)) is not None:
            headers = message.headers or {}
            stored.append(
                Stored(message.body.decode(), message.message_id or "", str(headers["task_key"]))
            )
        return stored

    try:
        yield Subject(broker, read)
    finally:
        await broker.close()
        await connection.close()


# getfixturevalue() below is not seen at collection, so conftest cannot mark the RabbitMQ
# runs from their fixtures: they are marked here, for `-m "not rabbitmq"`.
@pytest.fixture(params=["memory", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)])
async def subject(request: pytest.FixtureRequest) -> AsyncIterator[Subject]:
    if request.param == "memory":
        brokers = _memory()
    else:
        brokers = _rabbitmq(request.getfixturevalue("rabbitmq_url"))
    async for found in brokers:
        yield found


async def refused(subject: Subject, sent: Envelope) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        await subject.broker.publish(sent)
    return caught.value


async def test_a_routed_message_lands_with_its_properties(subject: Subject) -> None:
    """A direct route stores the message once, in its queue only, body and properties intact."""
    await subject.broker.publish(envelope("contract.direct", "one", "first"))

    assert await subject.read("contract.one") == [Stored("first", "id-first", "u:s:id-first")]
    assert await subject.read("contract.two") == []


async def test_an_unroutable_message_is_an_error_and_lands_nowhere(subject: Subject) -> None:
    """A mandatory message no queue is bound for is FAILED_PRECONDITION, never a silent OK."""
    error = await refused(subject, envelope("contract.direct", "nobody"))

    assert error.code is Code.FAILED_PRECONDITION
    assert "unroutable" in error.message
    for queue in QUEUES:
        assert await subject.read(queue) == []


async def test_a_missing_exchange_is_an_error(subject: Subject) -> None:
    """Publishing to an exchange that does not exist is FAILED_PRECONDITION naming it."""
    error = await refused(subject, envelope("contract.missing", "one"))

    assert error.code is Code.FAILED_PRECONDITION
    assert "'contract.missing' does not exist" in error.message
    assert await subject.broker.exchange_exists("contract.missing") is False
    assert await subject.broker.exchange_exists("contract.direct") is True


async def test_a_nack_from_one_of_several_queues_keeps_the_message_in_the_others(
    subject: Subject,
) -> None:
    """A full reject-publish queue refuses, the other queue stores: a nack, outcome unknown."""
    await subject.broker.publish(envelope("contract.direct", "full", "fills-it"))

    error = await refused(subject, envelope("contract.direct", "both", "second"))

    assert error.code is Code.UNAVAILABLE
    assert "outcome is unknown" in error.message
    assert [m.body for m in await subject.read("contract.two")] == ["second"]
    assert [m.body for m in await subject.read("contract.full")] == ["fills-it"]


async def test_a_full_drop_head_queue_drops_the_oldest(subject: Subject) -> None:
    """Over x-max-length with the default overflow, the oldest message goes and the new one is
    confirmed."""
    for body in ("a", "b", "c"):
        await subject.broker.publish(envelope("contract.direct", "head", body))

    assert [m.body for m in await subject.read("contract.head")] == ["b", "c"]


@pytest.mark.parametrize(
    ("routing_key", "queues"),
    [
        ("images.generate", ["contract.images", "contract.generate"]),
        ("images.edit.large", ["contract.images"]),
        ("videos.generate", ["contract.generate"]),
    ],
)
async def test_topic_routing_follows_the_patterns(
    subject: Subject, routing_key: str, queues: list[str]
) -> None:
    """`#` matches any number of words, `*` exactly one."""
    await subject.broker.publish(envelope("contract.topic", routing_key, routing_key))

    for queue in ("contract.images", "contract.generate"):
        expected = [routing_key] if queue in queues else []
        assert [m.body for m in await subject.read(queue)] == expected, queue


async def test_exchange_to_exchange_bindings_route_on(subject: Subject) -> None:
    """A message to an exchange bound to another reaches the second exchange's queues."""
    await subject.broker.publish(envelope("contract.front", "images.generate", "via-front"))

    assert [m.body for m in await subject.read("contract.images")] == ["via-front"]
    assert [m.body for m in await subject.read("contract.generate")] == ["via-front"]


async def test_a_broker_that_is_away_is_unavailable(subject: Subject) -> None:
    """Once disconnected, a publish is UNAVAILABLE at once and stores nothing."""
    await subject.broker.close()

    error = await refused(subject, envelope("contract.direct", "one", "late"))

    assert error.code is Code.UNAVAILABLE
    assert not subject.broker.connected
