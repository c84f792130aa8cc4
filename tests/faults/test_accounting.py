"""The suite's own instruments: the accounting catches what it claims to, the node is private."""

from __future__ import annotations

import json

import aio_pika
from yarl import URL

from tests.conftest import DEFINITIONS
from tests.faults.accounting import Drained, account
from tests.faults.load import KINDS, Answer
from tests.support.rabbit_node import RabbitNode


def _answer(task_id: str, code: str) -> Answer:
    task_key = f"u:image-generation:{task_id}" if code == "OK" else ""
    return Answer(KINDS[0], "u", task_id, task_id, code, task_key, "", 0.0, 0.01)


def _message(task_id: str) -> Drained:
    return Drained("images.queue", task_id, task_id, f"u:image-generation:{task_id}")


def test_accounting_finds_lost_phantom_and_duplicate_messages() -> None:
    """An OK without message is lost, a definite error with one is phantom, a repeat is a
    duplicate; an unknown outcome found or missing is neither."""
    answers = [
        _answer("ok-stored", "OK"),
        _answer("ok-lost", "OK"),
        _answer("invalid-stored", "FAILED_PRECONDITION"),
        _answer("unknown-stored", "UNAVAILABLE"),
        _answer("unknown-missing", "DEADLINE_EXCEEDED"),
        _answer("twice", "OK"),
    ]
    drained = [
        _message("ok-stored"),
        _message("invalid-stored"),
        _message("unknown-stored"),
        _message("twice"),
        _message("twice"),
        _message("from-elsewhere"),
    ]

    report = account("self-test", answers, drained, hang_after=1.0)

    assert (report.sent, report.ok) == (6, 3)
    assert report.errors == {"FAILED_PRECONDITION": 1, "UNAVAILABLE": 1, "DEADLINE_EXCEEDED": 1}
    assert [a.task_id for a in report.lost] == ["ok-lost"]
    assert [(a.task_id, n) for a, n in report.phantom] == [("invalid-stored", 1)]
    assert report.duplicates == {"twice": 2}
    assert [m.message_id for m in report.strangers] == ["from-elsewhere"]
    assert report.found == 4
    assert report.found_by_code == {"OK": 2, "FAILED_PRECONDITION": 1, "UNAVAILABLE": 1}
    assert not report.hangs


def test_accounting_flags_slow_answers_and_wrong_task_keys() -> None:
    """An answer slower than the deadline plus margin is a hang; a task key naming another task
    is a mismatch."""
    slow = Answer(KINDS[3], "u", "k", "slow", "UNAVAILABLE", "", "", 0.0, 2.6)
    wrong_key = Answer(KINDS[1], "u", "k2", "right", "OK", "u:image-generation:other", "", 0.0, 0.1)

    report = account("self-test", [slow, wrong_key], [_message("right")], hang_after=2.5)

    assert report.hangs == [slow]
    assert report.mismatched == ["answer 'u:image-generation:other' for task right"]


async def test_private_node_is_isolated_and_loads_the_deploy_definitions(
    private_rabbit: RabbitNode,
) -> None:
    """The private node has its own name and ports, rabbitmqctl reaches it and only it, and it
    booted with every exchange, queue and binding of deploy/rabbitmq/definitions.json."""
    definitions = json.loads(DEFINITIONS.read_text())

    node_name = (await private_rabbit.ctl("eval", "node().")).strip().strip("'")
    exchanges = await private_rabbit.ctl("list_exchanges", "name", "type", "durable")
    queues = await private_rabbit.ctl("list_queues", "name", "durable")
    bindings = await private_rabbit.ctl(
        "list_bindings", "source_name", "destination_name", "routing_key"
    )

    assert node_name == private_rabbit.node
    assert node_name.startswith("gwtest-")
    assert private_rabbit.amqp_port != 5672
    assert f":{private_rabbit.amqp_port}/" in private_rabbit.url
    for exchange in definitions["exchanges"]:
        assert f"{exchange['name']}\t{exchange['type']}\ttrue" in exchanges.splitlines()
    for queue in definitions["queues"]:
        assert f"{queue['name']}\ttrue" in queues.splitlines()
    for binding in definitions["bindings"]:
        row = f"{binding['source']}\t{binding['destination']}\t{binding['routing_key']}"
        assert row in bindings.splitlines()
    # A node that loads definitions at boot seeds no default user: the file declares guest.
    guest = await aio_pika.connect(
        str(URL(private_rabbit.url).with_user("guest").with_password("guest"))
    )
    await guest.close()
