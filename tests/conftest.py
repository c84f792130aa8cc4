"""Fixtures shared by every suite: settings for a gateway under test and a running gateway."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from gateway.app.server import Gateway
from gateway.broker import Broker
from gateway.config import BrokerSettings, GrpcSettings, HttpSettings, Settings

ROOT = Path(__file__).resolve().parents[1]
DEFINITIONS = ROOT / "deploy" / "rabbitmq" / "definitions.json"


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


def replace_settings(settings: Settings, section: str, **values: Any) -> Settings:
    return dataclasses.replace(
        settings, **{section: dataclasses.replace(getattr(settings, section), **values)}
    )


class RunningGateway:
    """A started Gateway and a gRPC channel to it."""

    def __init__(self, gateway: Gateway, channel: grpc.aio.Channel) -> None:
        self.gateway = gateway
        self.channel = channel

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gateway.grpc_port}"


GatewayFactory = Callable[..., Any]


@pytest.fixture
async def start_gateway() -> AsyncIterator[GatewayFactory]:
    """Start gateways with given settings (and broker); stop them all after the test."""
    running: list[RunningGateway] = []

    async def start(settings: Settings, broker: Broker | None = None) -> RunningGateway:
        gateway = Gateway(settings, broker=broker)
        await gateway.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{gateway.grpc_port}")
        running.append(RunningGateway(gateway, channel))
        return running[-1]

    yield start
    for item in reversed(running):
        await item.channel.close()
        await item.gateway.stop(grace=1.0)
