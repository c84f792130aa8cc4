"""Settings for a gateway under test (the test suites' and `python -m bench.loop_lag`'s)."""

from __future__ import annotations

from typing import Any

from gateway.config import BrokerSettings, GrpcSettings, HttpSettings, Settings
from tests.support import DEFINITIONS


def make_settings(broker_address: str = "", **sections: Any) -> Settings:
    """Settings for a test gateway: gRPC on a free port, the given broker, short timeouts."""
    return Settings(
        grpc=GrpcSettings(address="127.0.0.1:0", shutdown_grace_seconds=5.0),
        server=HttpSettings(address="127.0.0.1:0"),
        broker=BrokerSettings(
            address=broker_address,
            definitions=str(DEFINITIONS),
            connect_timeout_seconds=2.0,
            reconnect_max_backoff_seconds=0.5,
            publish_timeout_seconds=5.0,
        ),
        **sections,
    )
