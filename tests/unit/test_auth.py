"""gateway.core.auth and gateway.core.quota: the clients file, matching, token buckets."""

from __future__ import annotations

import hashlib
import os
import re
import time

import pytest

from gateway.core.auth import Clients, parse_clients
from gateway.core.context import PeerIdentity
from gateway.core.quota import Buckets
from gateway.errors import ConfigError

TOKEN_HASH = hashlib.sha256(b"t0ken").hexdigest()


def entry(**fields: object) -> dict[str, object]:
    return {"name": "svc", "token_sha256": TOKEN_HASH, "task_types": ["images.*"], **fields}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"name": "has space"}, "clients[0]: name must be"),
        ({"token_sha256": "ABC"}, "clients[0] ('svc'): token_sha256 must be 64 lower-case hex"),
        ({"token_sha256": None}, "needs token_sha256 or mtls_identity"),
        ({"task_types": []}, "task_types must be a non-empty list"),
        ({"user_ids": "(unclosed"}, "user_ids is not a regular expression"),
        ({"rate_per_second": 0}, "rate_per_second must be a number greater than 0"),
        ({"burst": 10}, "burst needs rate_per_second"),
        ({"colour": "red"}, "unknown key 'colour'"),
    ],
)
def test_a_bad_entry_is_named(fields: dict[str, object], message: str) -> None:
    """Each mistake in an entry is a ConfigError naming the entry and the key."""
    raw = entry(**fields)
    raw = {k: v for k, v in raw.items() if v is not None}

    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_clients({"clients": [raw]}, "clients.toml")


def test_two_clients_may_not_share_a_token() -> None:
    """A token (or name, or certificate identity) of two clients is refused, naming both."""
    with pytest.raises(ConfigError, match=r"clients\[1\] \('other'\): its token_sha256 .* 'svc'"):
        parse_clients({"clients": [entry(), entry(name="other")]}, "clients.toml")


def test_a_token_finds_its_client_and_no_other() -> None:
    """A known token gives its client; an unknown one gives none."""
    clients = Clients(parse_clients({"clients": [entry()]}, "f"))

    found = clients.by_token("t0ken")

    assert found is not None
    assert found.name == "svc"
    assert clients.by_token("t0ken ") is None


def test_a_certificate_is_matched_by_san_before_cn() -> None:
    """A SAN DNS name wins over the CN; a CN alone matches when no SAN does."""
    clients = Clients(
        parse_clients(
            {
                "clients": [
                    {"name": "by-san", "mtls_identity": "a.internal", "task_types": ["*"]},
                    {"name": "by-cn", "mtls_identity": "b.internal", "task_types": ["*"]},
                ]
            },
            "f",
        )
    )

    both = clients.by_certificate(PeerIdentity(("x.internal", "a.internal"), "b.internal"))
    cn_only = clients.by_certificate(PeerIdentity(("x.internal",), "b.internal"))

    assert both is not None
    assert both.name == "by-san"
    assert cn_only is not None
    assert cn_only.name == "by-cn"
    assert clients.by_certificate(PeerIdentity(("x.internal",), "y")) is None


def test_globs_and_user_ids_decide_what_a_client_publishes() -> None:
    """images.* allows images.generate, not videos.generate; ^[0-9]+$ allows 42, not 4a."""
    (client,) = parse_clients({"clients": [entry(user_ids="^[0-9]+$")]}, "f")

    assert client.may_publish("images.generate")
    assert not client.may_publish("videos.generate")
    assert client.may_publish_for("42")
    assert not client.may_publish_for("4a")


def test_a_bucket_allows_the_burst_then_tells_when_a_token_comes() -> None:
    """Burst 3 at rate 0.01/s: three at once pass, the fourth waits up to 100 s.

    A rate this slow refills nothing between the takes, however loaded the machine.
    """
    buckets = Buckets(slots=8)

    outcomes = [buckets.take("c", 0.01, 3) for _ in range(4)]

    assert outcomes[:3] == [None, None, None]
    assert outcomes[3] is not None
    assert 0 < outcomes[3] <= 100


def test_buckets_are_shared_with_a_forked_worker() -> None:
    """Tokens a forked worker takes are gone for the first one."""
    buckets = Buckets(slots=8)
    pid = os.fork()
    if pid == 0:  # the child must never return into pytest, whatever happens
        try:
            for _ in range(3):
                buckets.take("c", 0.001, 3)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)

    # At 0.001/s no token comes back while the child runs, however long that takes.
    assert buckets.take("c", 0.001, 3) is not None


def test_tokens_come_back_at_the_rate() -> None:
    """An emptied bucket has a token again after 1/rate seconds."""
    buckets = Buckets(slots=8)
    for _ in range(2):
        buckets.take("c", 50.0, 2)
    wait = buckets.take("c", 50.0, 2)
    assert wait is not None

    time.sleep(wait + 0.005)  # the clock is the behaviour under test

    assert buckets.take("c", 50.0, 2) is None
