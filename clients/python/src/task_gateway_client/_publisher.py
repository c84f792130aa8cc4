"""The batching publisher of the sync client: futures at once, PublishBatch calls behind them.

One sender thread gathers tasks into batches (`_batching`) and starts each PublishBatch call
without waiting for it (grpc's `.future()`); grpc's threads settle the answers. Futures are
resolved outside the lock, so a done-callback may publish again.

The sender thread is the process's that made the publisher: a child made by os.fork() has no
such thread, so the publisher refuses to work there rather than take tasks it never sends.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future
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

__all__ = ["Publisher"]


class Publisher:
    """Publishes many tasks over few PublishBatch calls; made by `TaskGatewayClient.publisher`.

    `publish` and `submit` return a `concurrent.futures.Future` of the task key at once; each
    task is retried on its own with its one idempotency key. `flush()` sends what waits and
    returns once every task so far has its outcome; `close()` flushes and stops.

    A future's done-callbacks run on grpc's threads: keep them short, and do not publish from
    them with `when_full="block"` (a full publisher would wait on the thread that frees it).

    A publisher works in the process that made it: in a child made by os.fork() `publish`,
    `submit`, `flush` and `close` raise RuntimeError; make a new client there.
    """

    def __init__(
        self,
        publish_batch: grpc.UnaryUnaryMultiCallable[
            gateway_pb2.PublishBatchRequest, gateway_pb2.PublishBatchResponse
        ],
        connection: Connection,
        settings: BatchSettings,
    ) -> None:
        self._publish_batch = publish_batch
        self._metadata = connection.metadata
        self._settings = settings
        self._batcher: Batcher[Future[str]] = Batcher(settings, connection)
        self._changed = threading.Condition()
        # Tasks without an outcome yet (flow control counts them), and tasks with an outcome
        # whose future is being resolved: room is made before a future is resolved, so that a
        # caller whose future is done finds it; flush() returns once both are 0.
        self._outstanding = 0
        self._resolving = 0
        self._flushing = 0  # flush() calls waiting: send every ready task at once
        self._closed = False
        self._pid = os.getpid()  # the process whose sender thread this is
        self._sender = threading.Thread(target=self._send_loop, name="task-gateway-publisher")
        self._sender.daemon = True  # a process that forgot close() still exits
        self._sender.start()

    def publish(
        self,
        task_type: str,
        user_id: str,
        payload: Mapping[str, Any],
        *,
        idempotency_key: str | None = None,
    ) -> Future[str]:
        """Queue a task of any task type with a JSON-like payload; a future of its task key."""
        return self._add(generic_task(task_type, user_id, payload, idempotency_key))

    def submit(self, request: Message) -> Future[str]:
        """Queue a typed request (e.g. images_pb2.GenerateRequest); a future of its task key."""
        return self._add(typed_task(request))

    def flush(self) -> None:
        """Send every waiting task now; return once every task published so far is settled."""
        self._check_process()
        with self._changed:
            self._flushing += 1
            self._changed.notify_all()
            try:
                self._changed.wait_for(lambda: self._outstanding == self._resolving == 0)
            finally:
                self._flushing -= 1

    def close(self) -> None:
        """Refuse new tasks, wait for the outcome of every outstanding one, stop the sender."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        self.flush()
        self._sender.join()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _check_process(self) -> None:
        """Raise RuntimeError in a forked child: its publisher has no sender thread, so a task
        would never be sent and flush() would wait forever."""
        if os.getpid() != self._pid:
            raise RuntimeError(
                "this publisher was made before a fork, and its sender thread does not exist "
                "in this process; make a new publisher/client in the child"
            )

    def _add(self, task: Task) -> Future[str]:
        self._check_process()
        future: Future[str] = Future()
        future.set_running_or_notify_cancel()  # a task on its way cannot be taken back
        with self._changed:
            while not self._settings.admits(self._outstanding, closed=self._closed):
                self._changed.wait()
            self._outstanding += 1
            self._batcher.add(task, future, time.monotonic())
            self._changed.notify_all()
        return future

    def _send_loop(self) -> None:
        while True:
            with self._changed:
                now = time.monotonic()
                step = self._batcher.due(now, flush=self._flushing > 0 or self._closed)
                if not (step.batches or step.outcomes):
                    if self._closed and self._outstanding == 0:
                        return
                    self._changed.wait(self._batcher.wait(now))
                    continue
                self._have_outcomes(len(step.outcomes))
            self._resolve(step.outcomes)
            for batch in step.batches:
                request, timeout = batch_request(batch, time.monotonic())
                try:
                    call = self._publish_batch.future(
                        request, timeout=timeout, metadata=self._metadata
                    )
                except Exception as error:  # e.g. the channel is closed: nothing was sent
                    self._settle(batch, client_failure(error, sent=False))
                else:
                    call.add_done_callback(functools.partial(self._answered, batch))

    def _answered(self, batch: list[Pending[Future[str]]], call: grpc.Future[Any]) -> None:
        """Runs on a grpc thread once a batch call ends."""
        answer: gateway_pb2.PublishBatchResponse | Failure
        try:
            answer = _answer(call)
        except Exception as error:  # e.g. cancelled as the channel closed; or a bug reading it
            # The tasks may have been published; their futures must settle all the same.
            answer = client_failure(error, sent=True)
        self._settle(batch, answer)

    def _settle(
        self,
        batch: list[Pending[Future[str]]],
        answer: gateway_pb2.PublishBatchResponse | Failure,
    ) -> None:
        with self._changed:
            outcomes = self._batcher.settle(batch, answer, time.monotonic())
            self._have_outcomes(len(outcomes))  # and retries may be due sooner than thought
        self._resolve(outcomes)

    def _have_outcomes(self, count: int) -> None:
        """With the lock held: `count` tasks have their outcome, to be resolved next."""
        self._outstanding -= count
        self._resolving += count
        self._changed.notify_all()

    def _resolve(self, outcomes: list[tuple[Future[str], Outcome]]) -> None:
        if not outcomes:
            return
        resolve(outcomes)
        with self._changed:
            self._resolving -= len(outcomes)
            self._changed.notify_all()


def _answer(call: grpc.Future[Any]) -> gateway_pb2.PublishBatchResponse | Failure:
    """The answer to a batch call that has ended: the response, or the call's failure."""
    try:
        response: gateway_pb2.PublishBatchResponse = call.result()
    except grpc.RpcError as error:
        return from_rpc_error(error)
    return response
