"""What the sync and the asyncio clients share but for the grpc API they use: their settings,
one callable per RPC of their channel, and the batching publishers they made."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

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
    """A client's connection settings, its channel's callables, and its publishers."""

    def __init__(
        self,
        connection: Connection,
        channel: UnaryChannel[CallT],
        make_publisher: Callable[[CallT, Connection, BatchSettings], PublisherT],
    ) -> None:
        self.connection = connection
        self.publishers: list[PublisherT] = []  # closed with the client
        self._channel = channel
        self._make_publisher = make_publisher
        self._calls: dict[str, CallT] = {}

    def call(self, path: str, response_type: type[Message]) -> CallT:
        """The channel's callable of the RPC at `path`, made on first use."""
        call = self._calls.get(path)
        if call is None:
            call = self._channel.unary_unary(
                path,
                request_serializer=serialize,
                response_deserializer=response_type.FromString,
            )
            self._calls[path] = call
        return call

    def publisher(self, settings: BatchSettings) -> PublisherT:
        """A new batching publisher on the channel's PublishBatch, kept to close with the client."""
        publish_batch = self.call(PUBLISH_BATCH, gateway_pb2.PublishBatchResponse)
        publisher = self._make_publisher(publish_batch, self.connection, settings)
        self.publishers.append(publisher)
        return publisher
