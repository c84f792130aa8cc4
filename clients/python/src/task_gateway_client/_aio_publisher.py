"""The batching publisher of the asyncio client: the same batches, driven by one sender task."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

import grpc
from google.protobuf.message import Message
from taskgateway_api.taskgateway.v1 import gateway_pb2

from task_gateway_client._batching import (
    Batcher,
    BatchSettings,
    Outcome,
    Pending,
    batch_request,
    resolve,
)
from task_gateway_client._connection import Connection
from task_gateway_client._errors import (
    Failure,
    client_failure,
    from_rpc_error,
)
from task_gateway_client._tasks import Task, generic_task, typed_task

__all__ = ["AsyncPublisher"]


class AsyncPublisher:
    """Publishes many tasks over few PublishBatch calls; made by `AsyncTaskGatewayClient.publisher`.

    `await publish(...)` returns a future of the task key as soon as the task is queued (it
    waits only while `max_outstanding` tasks are outstanding, unless `when_full="raise"`);
    `await` that future for the key. Each task is retried on its own with its one idempotency
    key. `flush()` sends what waits and returns once every task so far has its outcome;
    `close()` flushes and stops.
    """

    def __init__(
        self,
        publish_batch: grpc.aio.UnaryUnaryMultiCallable[
            gateway_pb2.PublishBatchRequest, gateway_pb2.PublishBatchResponse
        ],
        connection: Connection,
        settings: BatchSettings,
    ) -> None:
        self._publish_batch = publish_batch
        self._metadata = connection.metadata
        self._settings = settings
        self._batcher: Batcher[asyncio.Future[str]] = Batcher(settings, connection)
        self._outstanding = 0  # tasks whose future is not resolved yet
        self._flushing = 0  # flush() calls waiting: send every ready task at once
        self._closed = False
        self._wake_sender = asyncio.Event()
        self._settled = asyncio.Event()  # set whenever outcomes came in
        self._sender: asyncio.Task[None] | None = None
        self._calls: set[asyncio.Task[None]] = set()

    async def publish(
        self,
        task_type: str,
        user_id: str,
        payload: Mapping[str, Any],
        *,
        idempotency_key: str | None = None,
    ) -> asyncio.Future[str]:
        """Queue a task of any task type with a JSON-like payload; a future of its task key."""
        return await self._add(generic_task(task_type, user_id, payload, idempotency_key))

    async def submit(self, request: Message) -> asyncio.Future[str]:
        """Queue a typed request (e.g. images_pb2.GenerateRequest); a future of its task key."""
        return await self._add(typed_task(request))

    async def flush(self) -> None:
        """Send every waiting task now; return once every task published so far is settled."""
        self._flushing += 1
        self._wake_sender.set()
        try:
            await self._until(lambda: self._outstanding == 0)
        finally:
            self._flushing -= 1

    async def close(self) -> None:
        """Refuse new tasks, wait for the outcome of every outstanding one, stop the sender."""
        self._closed = True
        await self.flush()
        if self._sender is not None:
            self._sender.cancel()
            await asyncio.gather(self._sender, return_exceptions=True)

    async def __aenter__(self) -> AsyncPublisher:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _add(self, task: Task) -> asyncio.Future[str]:
        while not self._settings.admits(self._outstanding, closed=self._closed):
            await self._until(lambda: self._outstanding < self._settings.max_outstanding)
        future = asyncio.get_running_loop().create_future()
        self._outstanding += 1
        self._batcher.add(task, future, time.monotonic())
        if self._sender is None:
            self._sender = asyncio.create_task(self._send_loop(), name="task-gateway-publisher")
        self._wake_sender.set()
        return future

    async def _until(self, condition: Any) -> None:
        while not condition():
            self._settled.clear()
            await self._settled.wait()

    async def _send_loop(self) -> None:
        while True:
            now = time.monotonic()
            step = self._batcher.due(now, flush=self._flushing > 0 or self._closed)
            self._resolve(step.outcomes)
            for batch in step.batches:
                call = asyncio.create_task(self._send(batch))
                self._calls.add(call)
                call.add_done_callback(self._calls.discard)
            if step.batches or step.outcomes:
                continue
            self._wake_sender.clear()
            try:
                async with asyncio.timeout(self._batcher.wait(now)):
                    await self._wake_sender.wait()
            except TimeoutError:
                pass

    async def _send(self, batch: list[Pending[asyncio.Future[str]]]) -> None:
        answer: gateway_pb2.PublishBatchResponse | Failure
        try:
            answer = await self._call(batch)
        except Exception as error:  # e.g. the channel is closed; or a bug reading the answer
            # The request may have gone; the futures must settle all the same.
            answer = client_failure(error, sent=True)
        self._resolve(self._batcher.settle(batch, answer, time.monotonic()))
        self._wake_sender.set()  # retries may be due sooner than the sender thought

    async def _call(
        self, batch: list[Pending[asyncio.Future[str]]]
    ) -> gateway_pb2.PublishBatchResponse | Failure:
        """One PublishBatch call of a batch: the response, or the call's failure."""
        request, timeout = batch_request(batch, time.monotonic())
        try:
            response: gateway_pb2.PublishBatchResponse = await self._publish_batch(
                request, timeout=timeout, metadata=self._metadata
            )
        except grpc.aio.AioRpcError as error:
            return from_rpc_error(error)
        return response

    def _resolve(self, outcomes: list[tuple[asyncio.Future[str], Outcome]]) -> None:
        if not outcomes:
            return
        resolve(outcomes)
        self._outstanding -= len(outcomes)
        self._settled.set()
