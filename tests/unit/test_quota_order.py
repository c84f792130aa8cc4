"""A task takes its quota token last: one refused for any other reason takes none.

The quota is the Quota middleware's `admit` hook, which the Ingestor calls for each task; a
task the in-flight cap or a spent deadline refuses was never going to be sent, and must not
cost the client a token it then lacks for its retry.
"""

from __future__ import annotations

import asyncio

import pytest

from gateway.broker.memory import MemoryBroker
from gateway.contracts.files import CONTRACT_FILES
from gateway.contracts.routing import build_route_table
from gateway.core.auth import Client
from gateway.core.context import CallContext
from gateway.core.ingest import Ingestor, TaskRequest
from gateway.core.quota import Buckets, Quota
from gateway.errors import Code, GatewayError
from tests.unit.test_ingest import GENERATE, GatedBroker, definitions

# One token, and at this rate none comes back while a test runs, however slow the machine.
CLIENT = Client(
    name="metered",
    token_sha256=None,
    mtls_identity=None,
    task_types=("*",),
    user_ids=None,
    rate_per_second=0.0001,
    burst=1,
)
TASK = TaskRequest("alice", "images.generate", GENERATE)


@pytest.fixture
async def broker() -> GatedBroker:
    memory = MemoryBroker(definitions())
    await memory.start()
    return GatedBroker(memory)


def metered_ingestor(broker: GatedBroker, *, max_in_flight: int = 100) -> Ingestor:
    return Ingestor(
        build_route_table(CONTRACT_FILES, []),
        broker,
        app_id="gateway-tests",
        publish_timeout=30.0,
        max_in_flight=max_in_flight,
        middlewares=[Quota(Buckets(slots=8))],
    )


def call(client: Client | None = CLIENT, timeout: float | None = None) -> CallContext:
    context = CallContext.start(
        "grpc", method="/test/Call", peer="ipv4:127.0.0.1:1", timeout=timeout, metadata={}
    )
    context.client = client
    return context


async def test_a_task_refused_by_the_in_flight_cap_takes_no_token(broker: GatedBroker) -> None:
    ingest = metered_ingestor(broker, max_in_flight=1)
    unmetered = asyncio.create_task(ingest.submit(TASK, call(client=None)))
    await broker.started.wait()  # the one publish the cap allows is in flight

    with pytest.raises(GatewayError) as refused:
        await ingest.submit(TASK, call())
    broker.release.set()
    await unmetered

    assert refused.value.code is Code.RESOURCE_EXHAUSTED
    assert "broker.max_in_flight" in refused.value.message
    accepted = await ingest.submit(TASK, call())  # the client's one token is still there
    assert accepted.task_key.startswith("alice:image-generation:")


async def test_a_task_refused_for_its_spent_deadline_takes_no_token(broker: GatedBroker) -> None:
    ingest = metered_ingestor(broker)
    broker.release.set()

    with pytest.raises(GatewayError) as refused:
        await ingest.submit(TASK, call(timeout=0.0))

    assert refused.value.code is Code.DEADLINE_EXCEEDED
    assert "nothing was published" in refused.value.message
    accepted = await ingest.submit(TASK, call())  # the client's one token is still there
    assert accepted.task_key.startswith("alice:image-generation:")


async def test_the_token_is_still_taken_by_a_task_that_is_sent(broker: GatedBroker) -> None:
    """The check is not lost on the way: a second task of a one-token client is refused."""
    ingest = metered_ingestor(broker)
    broker.release.set()
    await ingest.submit(TASK, call())

    with pytest.raises(GatewayError) as refused:
        await ingest.submit(TASK, call())

    assert refused.value.code is Code.RESOURCE_EXHAUSTED
    assert "over its quota" in refused.value.message
    assert broker.calls == 1
