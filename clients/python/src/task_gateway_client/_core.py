"""What the sync and the asyncio clients share but for the grpc API they use: their settings,
one callable per RPC of their channels, and the batching publishers they made."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar, cast

from google.protobuf.message import Message
from taskgateway_api.taskgateway.v1 import gateway_pb2

from task_gateway_client._batching import BatchSettings
from task_gateway_client._connection import Connection
from task_gateway_client._tasks import PUBLISH_BATCH, serialize

__all__ = ["ClientCore"]

# A unary callable of the channel: grpc's, or grpc.aio's.
CallT = TypeVar("CallT")
CallT_co = TypeVar("CallT_co", covariant=True)
# A Publisher, or an AsyncPublisher.
PublisherT = TypeVar("PublisherT")


class UnaryChannel(Protocol[CallT_co]):
    """A grpc.Channel, or a grpc.aio.Channel."""

    def unary_unary(
        self,
        method: str,
        request_serializer: Callable[..., Any] | None,
        response_deserializer: Callable[..., Any] | None,
    ) -> CallT_co: ...


class ClientCore(Generic[CallT, PublisherT]):
    """A client's connection settings, its channels' callables, and its publishers."""

    def __init__(
        self,
        connection: Connection,
        channels: Sequence[UnaryChannel[CallT]],
        make_publisher: Callable[[CallT, Connection, BatchSettings], PublisherT],
    ) -> None:
        self.connection = connection
        self.publishers: list[PublisherT] = []  # closed with the client
        self._channels = channels
        self._make_publisher = make_publisher
        self._calls: dict[str, CallT] = {}

    def call(self, path: str, response_type: type[Message]) -> CallT:
        """The callable of the RPC at `path`, made on first use: on several channels, each
        call goes out on the next one in turn."""
        call = self._calls.get(path)
        if call is None:
            calls = [
                channel.unary_unary(
                    path,
                    request_serializer=serialize,
                    response_deserializer=response_type.FromString,
                )
                for channel in self._channels
            ]
            call = calls[0] if len(calls) == 1 else cast(CallT, _InTurn(calls))
            self._calls[path] = call
        return call

    def publisher(self, settings: BatchSettings) -> PublisherT:
        """A new batching publisher on the client's PublishBatch (its channels in turn), kept to
        close with the client."""
        publish_batch = self.call(PUBLISH_BATCH, gateway_pb2.PublishBatchResponse)
        publisher = self._make_publisher(publish_batch, self.connection, settings)
        self.publishers.append(publisher)
        return publisher


class _InTurn:
    """One RPC's callables on several channels, used one after the other.

    A gateway's worker processes share its port, and the kernel spreads connections over
    them, not calls: one connection keeps a client on one worker. Calls in turn over several
    connections can use several workers.
    """

    def __init__(self, calls: Sequence[Any]) -> None:
        self._next = itertools.cycle(calls).__next__

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._next()(*args, **kwargs)

    def future(self, *args: Any, **kwargs: Any) -> Any:
        return self._next().future(*args, **kwargs)
