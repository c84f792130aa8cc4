"""gateway.broker.memory: definitions and RabbitMQ-like routing of the in-memory broker."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gateway.broker import Envelope
from gateway.broker.memory import Definitions, MemoryBroker
from gateway.errors import Code, ConfigError, GatewayError

DEFINITIONS = Path(__file__).parents[2] / "deploy/rabbitmq/definitions.json"


def envelope(exchange: str, routing_key: str, body: bytes = b"{}") -> Envelope:
    return Envelope(
        exchange=exchange,
        routing_key=routing_key,
        body=body,
        message_id=f"id-{routing_key}",
        type=routing_key,
        timestamp=datetime(2024, 1, 1, tzinfo=UTC),
        app_id="tests",
    )


async def started(definitions: Definitions) -> MemoryBroker:
    broker = MemoryBroker(definitions)
    await broker.start()
    return broker


def topology(
    exchanges: dict[str, str],
    queues: list[str | dict[str, Any]],
    bindings: list[tuple[str, str, str] | tuple[str, str, str, str]],
) -> Definitions:
    """Definitions from short forms: bindings are (source, destination, key[, "exchange"])."""
    return Definitions.parse(
        {
            "exchanges": [{"name": n, "vhost": "/", "type": t} for n, t in exchanges.items()],
            "queues": [
                {"name": q, "vhost": "/"} if isinstance(q, str) else {"vhost": "/", **q}
                for q in queues
            ],
            "bindings": [
                {
                    "source": b[0],
                    "destination": b[1],
                    "routing_key": b[2],
                    "destination_type": b[3] if len(b) > 3 else "queue",
                    "vhost": "/",
                }
                for b in bindings
            ],
        }
    )


def test_load_reads_the_deployed_definitions() -> None:
    """The deployed definitions.json declares both exchanges, both queues and four bindings."""
    definitions = Definitions.load(DEFINITIONS)

    assert definitions.exchanges == {"images.tasks": "direct", "videos.tasks": "direct"}
    assert set(definitions.queues) == {"images.queue", "videos.queue"}
    assert {(b.source, b.destination, b.routing_key) for b in definitions.bindings} == {
        ("images.tasks", "images.queue", "images.generate"),
        ("images.tasks", "images.queue", "images.edit"),
        ("videos.tasks", "videos.queue", "videos.generate"),
        ("videos.tasks", "videos.queue", "videos.animate"),
    }


def test_load_of_missing_file_names_it(tmp_path: Path) -> None:
    """A definitions file that cannot be read is a ConfigError naming broker.definitions."""
    with pytest.raises(ConfigError, match=r"broker\.definitions: cannot read .*missing\.json"):
        Definitions.load(tmp_path / "missing.json")


def test_load_of_invalid_json_names_it(tmp_path: Path) -> None:
    """A definitions file that is not JSON is a ConfigError naming the file."""
    path = tmp_path / "defs.json"
    path.write_text("{nope", encoding="utf-8")

    with pytest.raises(ConfigError, match=r"defs\.json is not valid JSON"):
        Definitions.load(path)


def test_parse_keeps_only_the_requested_vhost() -> None:
    """Objects of other vhosts are left out."""
    definitions = Definitions.parse(
        {
            "exchanges": [
                {"name": "root", "vhost": "/", "type": "direct"},
                {"name": "other", "vhost": "other", "type": "direct"},
            ]
        }
    )

    assert definitions.exchanges == {"root": "direct"}


def test_parse_refuses_an_exchange_type_it_cannot_route() -> None:
    """A headers exchange is a ConfigError naming the exchange and its type."""
    with pytest.raises(ConfigError, match=r"exchange 'h' has type 'headers'"):
        Definitions.parse({"exchanges": [{"name": "h", "vhost": "/", "type": "headers"}]})


async def test_publish_routes_to_the_bound_queue() -> None:
    """images.generate on images.tasks lands in images.queue and nowhere else."""
    broker = await started(Definitions.load(DEFINITIONS))
    sent = envelope("images.tasks", "images.generate", b'{"a":1}')

    await broker.publish(sent)

    assert broker.messages("images.queue") == [sent]
    assert broker.messages("videos.queue") == []


async def test_missing_exchange_is_failed_precondition() -> None:
    """A publish to an exchange that does not exist is FAILED_PRECONDITION naming it and the key."""
    broker = await started(Definitions.load(DEFINITIONS))

    with pytest.raises(GatewayError) as caught:
        await broker.publish(envelope("audio.tasks", "audio.generate"))

    assert caught.value.code is Code.FAILED_PRECONDITION
    assert "'audio.tasks'" in caught.value.message
    assert "'audio.generate'" in caught.value.message


async def test_unbound_routing_key_is_failed_precondition() -> None:
    """A routing key no queue is bound for is FAILED_PRECONDITION naming exchange and key."""
    broker = await started(Definitions.load(DEFINITIONS))

    with pytest.raises(GatewayError) as caught:
        await broker.publish(envelope("images.tasks", "images.upscale"))

    assert caught.value.code is Code.FAILED_PRECONDITION
    assert "'images.tasks'" in caught.value.message
    assert "'images.upscale'" in caught.value.message
    assert "unroutable" in caught.value.message
    assert broker.messages("images.queue") == []


async def test_fanout_ignores_the_routing_key() -> None:
    """A fanout exchange copies a message to every bound queue whatever its routing key."""
    broker = await started(
        topology({"all": "fanout"}, ["q1", "q2"], [("all", "q1", "x"), ("all", "q2", "")])
    )
    sent = envelope("all", "anything.at.all")

    await broker.publish(sent)

    assert broker.messages("q1") == [sent]
    assert broker.messages("q2") == [sent]


@pytest.mark.parametrize(
    ("routing_key", "queues"),
    [
        ("images.generate", {"star", "hash", "all", "suffix"}),
        ("images.edit", {"star", "hash", "all"}),
        ("images", {"hash", "all"}),
        ("images.generate.hd", {"hash", "all"}),
        ("videos.generate", {"all", "suffix"}),
        ("videos.generate.hd", {"all"}),
    ],
)
async def test_topic_wildcards(routing_key: str, queues: set[str]) -> None:
    """In a topic exchange '*' matches exactly one word and '#' zero or more."""
    names = ["star", "hash", "all", "suffix"]
    broker = await started(
        topology(
            {"topic": "topic"},
            names,
            [
                ("topic", "star", "images.*"),
                ("topic", "hash", "images.#"),
                ("topic", "all", "#"),
                ("topic", "suffix", "*.generate"),
            ],
        )
    )

    await broker.publish(envelope("topic", routing_key))

    assert {name for name in names if broker.messages(name)} == queues


async def test_message_matching_two_bindings_of_one_queue_is_queued_once() -> None:
    """A queue bound twice with matching keys receives one copy of a message."""
    broker = await started(
        topology({"topic": "topic"}, ["q"], [("topic", "q", "a.*"), ("topic", "q", "#")])
    )

    await broker.publish(envelope("topic", "a.b"))

    assert len(broker.messages("q")) == 1


async def test_exchange_to_exchange_binding() -> None:
    """A message follows an exchange-to-exchange binding to the downstream exchange's queues."""
    broker = await started(
        topology(
            {"front": "direct", "back": "topic", "loop": "fanout"},
            ["q", "other"],
            [
                ("front", "back", "images.generate", "exchange"),
                ("back", "q", "images.*"),
                ("back", "other", "videos.*"),
                # A cycle back to the front exchange must not loop.
                ("back", "loop", "#", "exchange"),
                ("loop", "front", "", "exchange"),
            ],
        )
    )
    sent = envelope("front", "images.generate")

    await broker.publish(sent)

    assert broker.messages("q") == [sent]
    assert broker.messages("other") == []


async def test_exchange_to_exchange_binding_with_no_queue_is_unroutable() -> None:
    """A message that reaches only exchanges without matching queues is FAILED_PRECONDITION."""
    broker = await started(
        topology(
            {"front": "fanout", "back": "direct"},
            ["q"],
            [
                ("front", "back", "", "exchange"),
                ("back", "q", "images.edit"),
            ],
        )
    )

    with pytest.raises(GatewayError) as caught:
        await broker.publish(envelope("front", "images.generate"))

    assert caught.value.code is Code.FAILED_PRECONDITION


async def test_full_reject_publish_queue_nacks_and_keeps_its_messages() -> None:
    """A full queue with x-overflow reject-publish nacks (UNAVAILABLE) and is left unchanged."""
    broker = await started(
        topology(
            {"ex": "direct"},
            [{"name": "q", "arguments": {"x-max-length": 1, "x-overflow": "reject-publish"}}],
            [("ex", "q", "k")],
        )
    )
    first = envelope("ex", "k", b"first")
    await broker.publish(first)

    with pytest.raises(GatewayError) as caught:
        await broker.publish(envelope("ex", "k", b"second"))

    assert caught.value.code is Code.UNAVAILABLE
    assert "'q' is full" in caught.value.message
    assert broker.messages("q") == [first]


async def test_a_nack_from_one_full_queue_keeps_the_message_in_the_others() -> None:
    """As RabbitMQ does: one queue refuses, the others store it, the nack says outcome unknown."""
    broker = await started(
        topology(
            {"ex": "fanout"},
            [
                "open",
                {"name": "full", "arguments": {"x-max-length": 0, "x-overflow": "reject-publish"}},
            ],
            [("ex", "open", ""), ("ex", "full", "")],
        )
    )

    sent = envelope("ex", "k")
    with pytest.raises(GatewayError) as caught:
        await broker.publish(sent)

    assert caught.value.code is Code.UNAVAILABLE
    assert "outcome is unknown" in caught.value.message
    assert broker.messages("open") == [sent]
    assert broker.messages("full") == []


async def test_full_drop_head_queue_drops_the_oldest() -> None:
    """A full queue with the default overflow keeps the newest messages, as RabbitMQ's drop-head."""
    broker = await started(
        topology(
            {"ex": "direct"}, [{"name": "q", "arguments": {"x-max-length": 2}}], [("ex", "q", "k")]
        )
    )
    sent = [envelope("ex", "k", str(i).encode()) for i in range(3)]

    for message in sent:
        await broker.publish(message)

    assert broker.messages("q") == sent[1:]


async def test_reject_publish_without_max_length_accepts_messages() -> None:
    """A queue with x-overflow reject-publish but no x-max-length is never full."""
    broker = await started(
        topology(
            {"ex": "direct"},
            [{"name": "q", "arguments": {"x-overflow": "reject-publish"}}],
            [("ex", "q", "k")],
        )
    )
    sent = envelope("ex", "k")

    await broker.publish(sent)

    assert broker.messages("q") == [sent]


async def test_publish_before_start_is_unavailable() -> None:
    """A broker that was never started refuses publishes with UNAVAILABLE."""
    broker = MemoryBroker(Definitions.load(DEFINITIONS))

    assert not broker.connected
    with pytest.raises(GatewayError) as caught:
        await broker.publish(envelope("images.tasks", "images.generate"))

    assert caught.value.code is Code.UNAVAILABLE


async def test_publish_after_close_is_unavailable() -> None:
    """After close() a publish is UNAVAILABLE and nothing is queued."""
    broker = await started(Definitions.load(DEFINITIONS))
    await broker.close()

    with pytest.raises(GatewayError) as caught:
        await broker.publish(envelope("images.tasks", "images.generate"))

    assert caught.value.code is Code.UNAVAILABLE
    assert broker.messages("images.queue") == []


async def test_state_listener_hears_start_and_close() -> None:
    """A state listener is called with the current state, then on start and on close."""
    broker = MemoryBroker(Definitions.load(DEFINITIONS))
    states: list[bool] = []
    broker.add_state_listener(states.append)

    await broker.start()
    await broker.close()

    assert states == [False, True, False]
