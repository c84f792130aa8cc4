"""The sync client: one call per task, retried with its one idempotency key."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import grpc
from google.protobuf.message import Message

from task_gateway_client._batching import BatchSettings
from task_gateway_client._connection import DEFAULT_DEADLINE, Connection, TLSConfig
from task_gateway_client._core import ClientCore
from task_gateway_client._errors import from_rpc_error
from task_gateway_client._publisher import Publisher
from task_gateway_client._retry import RetryPolicy
from task_gateway_client._tasks import Task, generic_task, typed_task

__all__ = ["TaskGatewayClient"]


class TaskGatewayClient:
    """A connection to the Task Gateway, for threads and plain functions.

    `target` is `host:port`. `tls` (a TLSConfig) turns TLS on; `token` is sent as
    `authorization: Bearer <token>`. `deadline` (a positive finite number of seconds) bounds
    each task from the call to its outcome, every retry included; a call's own `deadline=`
    overrides it (None: the client's). `retry` says how to back off between attempts.
    `connections` is how many connections the client opens, calls taking them in turn: the
    gateway's worker processes share its port and the kernel spreads connections over them,
    not calls, so a client that should keep more than one worker busy (a busy publisher)
    opens as many connections as the gateway has workers, or more.
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
        self._channels = connection.channels(target, grpc)
        self._core: ClientCore[grpc.UnaryUnaryMultiCallable[Any, Any], Publisher] = ClientCore(
            connection, self._channels, Publisher
        )

    def submit(self, request: Message, *, deadline: float | None = None) -> str:
        """Publish a typed request (e.g. images_pb2.GenerateRequest) with its RPC; its task key.

        The RPC is the one of the contracts that takes this message type. Raises a
        TaskGatewayError subclass (InvalidTask, OutcomeUnknown, ...) when it is not published.
        """
        return self._publish(typed_task(request), deadline)

    def publish(
        self,
        task_type: str,
        user_id: str,
        payload: Mapping[str, Any],
        *,
        idempotency_key: str | None = None,
        deadline: float | None = None,
    ) -> str:
        """Publish a task of any task type with a JSON-like payload (the generic Publish)."""
        return self._publish(generic_task(task_type, user_id, payload, idempotency_key), deadline)

    def publisher(
        self,
        *,
        max_batch: int = BatchSettings.max_batch,
        max_latency: float = BatchSettings.max_latency,
        max_outstanding: int = BatchSettings.max_outstanding,
        when_full: str = BatchSettings.when_full,
        max_batch_bytes: int = BatchSettings.max_batch_bytes,
    ) -> Publisher:
        """A batching publisher on the client's connections (see Publisher), closed with it.

        A task waits up to `max_latency` seconds for others to share a PublishBatch call of at
        most `max_batch` tasks (1000 at most: the gateway refuses larger batches by default)
        and `max_batch_bytes`; when `max_outstanding` tasks await their outcome, `publish`
        blocks (`when_full="block"`) or raises PublisherFull (`"raise"`).
        """
        settings = BatchSettings(
            max_batch=max_batch,
            max_latency=max_latency,
            max_batch_bytes=max_batch_bytes,
            max_outstanding=max_outstanding,
            when_full=when_full,
        )
        return self._core.publisher(settings)

    def close(self) -> None:
        """Close the publishers (waiting for their tasks), then the connection."""
        for publisher in self._core.publishers:
            publisher.close()
        for channel in self._channels:
            channel.close()

    def __enter__(self) -> TaskGatewayClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _publish(self, task: Task, deadline: float | None) -> str:
        attempts = self._connection.attempts(task, deadline)
        call = self._core.call(task.path, task.response_type)
        while (timeout := attempts.timeout(time.monotonic())) is not None:
            try:
                response = call(task.request, timeout=timeout, metadata=self._connection.metadata)
            except grpc.RpcError as error:
                delay = attempts.failed(from_rpc_error(error), time.monotonic())
                if delay is None:
                    raise attempts.final_error() from error
                time.sleep(delay)
            else:
                task_key: str = response.task_key
                return task_key
        raise attempts.final_error()
