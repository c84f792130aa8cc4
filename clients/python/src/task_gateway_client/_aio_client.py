"""The asyncio client: the sync client's calls and retries, awaited."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

import grpc
from google.protobuf.message import Message

from task_gateway_client._aio_publisher import AsyncPublisher
from task_gateway_client._batching import BatchSettings
from task_gateway_client._connection import DEFAULT_DEADLINE, Connection, TLSConfig
from task_gateway_client._core import ClientCore
from task_gateway_client._errors import from_rpc_error
from task_gateway_client._retry import RetryPolicy
from task_gateway_client._tasks import Task, generic_task, typed_task

__all__ = ["AsyncTaskGatewayClient"]


class AsyncTaskGatewayClient:
    """A connection to the Task Gateway for asyncio code; use it with `async with`.

    Takes the same arguments as TaskGatewayClient. Make it inside the event loop that uses it.
    """

    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        tls: TLSConfig | None = None,
        deadline: float = DEFAULT_DEADLINE,
        retry: RetryPolicy | None = None,
        connections: int = 1,
    ) -> None:
        self._connection = connection = Connection.of(tls, token, deadline, retry, connections)
        self._channels = connection.channels(target, grpc.aio)
        self._core: ClientCore[grpc.aio.UnaryUnaryMultiCallable[Any, Any], AsyncPublisher] = (
            ClientCore(connection, self._channels, AsyncPublisher)
        )

    async def submit(self, request: Message, *, deadline: float | None = None) -> str:
        """Publish a typed request (e.g. images_pb2.GenerateRequest) with its RPC; its task key."""
        return await self._publish(typed_task(request), deadline)

    async def publish(
        self,
        task_type: str,
        user_id: str,
        payload: Mapping[str, Any],
        *,
        idempotency_key: str | None = None,
        deadline: float | None = None,
    ) -> str:
        """Publish a task of any task type with a JSON-like payload (the generic Publish)."""
        task = generic_task(task_type, user_id, payload, idempotency_key)
        return await self._publish(task, deadline)

    def publisher(
        self,
        *,
        max_batch: int = BatchSettings.max_batch,
        max_latency: float = BatchSettings.max_latency,
        max_outstanding: int = BatchSettings.max_outstanding,
        when_full: str = BatchSettings.when_full,
        max_batch_bytes: int = BatchSettings.max_batch_bytes,
    ) -> AsyncPublisher:
        """A batching publisher on the client's connections (see AsyncPublisher), closed with it.

        The knobs are those of `TaskGatewayClient.publisher`.
        """
        settings = BatchSettings(
            max_batch=max_batch,
            max_latency=max_latency,
            max_batch_bytes=max_batch_bytes,
            max_outstanding=max_outstanding,
            when_full=when_full,
        )
        return self._core.publisher(settings)

    async def close(self) -> None:
        """Close the publishers (waiting for their tasks), then the connection."""
        for publisher in self._core.publishers:
            await publisher.close()
        for channel in self._channels:
            await channel.close(grace=None)

    async def __aenter__(self) -> AsyncTaskGatewayClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _publish(self, task: Task, deadline: float | None) -> str:
        attempts = self._connection.attempts(task, deadline)
        call = self._core.call(task.path, task.response_type)
        while (timeout := attempts.timeout(time.monotonic())) is not None:
            try:
                metadata = self._connection.metadata
                response = await call(task.request, timeout=timeout, metadata=metadata)
            except grpc.aio.AioRpcError as error:
                delay = attempts.failed(from_rpc_error(error), time.monotonic())
                if delay is None:
                    raise attempts.final_error() from error
                await asyncio.sleep(delay)
            else:
                task_key: str = response.task_key
                return task_key
        raise attempts.final_error()
