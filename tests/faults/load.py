"""A bounded load driver: concurrent clients of one gateway, every answer recorded.

Each request carries a unique idempotency key, so its task id is known before it is sent
(`new_task_id(user_id, task_type, key)`) and the message it may have produced can be found in
the queues whatever the answer was. Requests rotate through the transports and task types a
real client mix uses: typed gRPC (`ImagesService/Generate`), the generic gRPC `Publish` (the
legacy request shape, to both domains) and the legacy REST route `POST /api/v1/broker/publish`.
Everything goes to 127.0.0.1; the number of requests and the run time are both capped.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp
import grpc
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from taskgateway_api.images.v1 import images_pb2, images_pb2_grpc
from taskgateway_api.taskgateway.v1 import gateway_pb2, gateway_pb2_grpc

from gateway.core.tasks import new_task_id

__all__ = ["KINDS", "Answer", "HealthWatch", "Kind", "LoadDriver"]

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

IMAGE_PAYLOAD = {"model": "fault-model", "prompt": "a lighthouse in a storm", "image_name": "img"}
VIDEO_PAYLOAD = {"model": "fault-model", "prompt": "waves on a pier", "video_name": "vid"}


@dataclass(frozen=True)
class Kind:
    """One way of sending a task: transport and task type."""

    transport: str  # "grpc-typed", "grpc-publish" or "rest"
    task_type: str

    @property
    def exchange(self) -> str:
        return self.task_type.partition(".")[0] + ".tasks"


KINDS = (
    Kind("grpc-typed", "images.generate"),
    Kind("grpc-publish", "images.generate"),
    Kind("grpc-publish", "videos.generate"),
    Kind("rest", "images.generate"),
    Kind("rest", "videos.generate"),
)


@dataclass(frozen=True)
class Answer:
    """What one request got back.

    `code` is "OK", a gRPC status name, "HTTP_<status>" for a REST error, "HTTP_CONNECT_ERROR"
    (the request was never sent), "HTTP_DISCONNECTED" (sent, then the connection dropped) or
    "HANG" (nothing came back within the deadline plus the margin; the call was abandoned).
    """

    kind: Kind
    user_id: str
    idempotency_key: str
    task_id: str
    code: str
    task_key: str
    detail: str
    started: float  # time.monotonic() when sent
    latency: float

    @property
    def ok(self) -> bool:
        return self.code == "OK"

    @property
    def finished(self) -> float:
        return self.started + self.latency


class LoadDriver:
    """`clients` concurrent senders; `start()`, wait on answers, `stop()`; `send()` for probes."""

    def __init__(
        self,
        grpc_address: str,
        http_port: int,
        *,
        run: str,
        clients: int = 32,
        deadline: float = 2.0,
        margin: float = 0.5,
        max_requests: int = 20000,
        pause_after_error: float = 0.05,
        max_seconds: float = 60.0,
        kinds: Iterable[Kind] = KINDS,
    ) -> None:
        if not grpc_address.startswith("127.0.0.1:"):
            raise ValueError("the load driver only talks to 127.0.0.1")
        self._grpc_address = grpc_address
        self._publish_url = f"http://127.0.0.1:{http_port}/api/v1/broker/publish"
        self._run = run
        self._clients = clients
        self.deadline = deadline
        self.margin = margin
        self._max_requests = max_requests
        self._max_seconds = max_seconds
        self._kinds = tuple(kinds)
        self._pause_after_error = pause_after_error
        self.answers: list[Answer] = []
        self._numbers = itertools.count()
        self._changed = asyncio.Condition()
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._channel: grpc.aio.Channel | None = None
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> LoadDriver:
        self._channel = grpc.aio.insecure_channel(self._grpc_address)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._clients * 2),
            timeout=aiohttp.ClientTimeout(total=None),
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()
        if self._session is not None:
            await self._session.close()
        if self._channel is not None:
            await self._channel.close(None)

    def start(self) -> None:
        """Start the clients; they run until `stop()`, `max_requests` or `max_seconds`."""
        until = time.monotonic() + self._max_seconds
        self._tasks = [
            asyncio.create_task(self._client(i, until), name=f"load-client-{i}")
            for i in range(self._clients)
        ]

    async def stop(self) -> None:
        """Let every request in flight get its answer, then return."""
        self._stopping.set()
        if self._tasks:
            await asyncio.gather(*self._tasks)

    async def wait_until(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        """Wait, answer by answer, until `predicate()` holds; TimeoutError naming `what`."""
        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(predicate)
        except TimeoutError:
            raise TimeoutError(
                f"not within {timeout}s: {what}; answers so far: {self.summary()}"
            ) from None

    def count(
        self,
        codes: Iterable[str] | None = None,
        *,
        since: float = 0.0,
        task_type: str | None = None,
    ) -> int:
        """Answers sent at or after `since` with one of `codes` (any when None)."""
        wanted = None if codes is None else set(codes)
        return sum(
            1
            for a in self.answers
            if a.started >= since
            and (wanted is None or a.code in wanted)
            and (task_type is None or a.kind.task_type == task_type)
        )

    def reached(
        self,
        n: int,
        codes: Iterable[str] | None = None,
        *,
        since: float = 0.0,
        task_type: str | None = None,
    ) -> Callable[[], bool]:
        """A predicate for `wait_until`: at least `n` answers as `count` selects them."""
        wanted = None if codes is None else tuple(codes)
        return lambda: self.count(wanted, since=since, task_type=task_type) >= n

    def summary(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for answer in self.answers:
            counts[answer.code] = counts.get(answer.code, 0) + 1
        return counts

    async def send(self, kind: Kind, client: int = 0) -> Answer:
        """Send one request of `kind` and record its answer."""
        number = next(self._numbers)
        user_id = f"fault-user-{client}"
        key = f"{self._run}-{number}-{uuid.uuid4().hex[:12]}"
        task_id = new_task_id(user_id, kind.task_type, key)
        started = time.monotonic()
        if kind.transport == "rest":
            code, task_key, detail = await self._rest(kind, user_id, key)
        else:
            code, task_key, detail = await self._grpc(kind, user_id, key)
        answer = Answer(
            kind, user_id, key, task_id, code, task_key, detail, started, time.monotonic() - started
        )
        async with self._changed:
            self.answers.append(answer)
            self._changed.notify_all()
        return answer

    async def probe(self, rounds: int = 2) -> list[Answer]:
        """Every kind `rounds` times, concurrently: the requests that show service is back."""
        return list(
            await asyncio.gather(
                *(self.send(kind, client=99) for _ in range(rounds) for kind in self._kinds)
            )
        )

    async def _client(self, client: int, until: float) -> None:
        for turn in itertools.count():
            if self._stopping.is_set() or time.monotonic() >= until:
                return
            if len(self.answers) + self._clients > self._max_requests:
                return
            answer = await self.send(self._kinds[(turn + client) % len(self._kinds)], client)
            if not answer.ok:  # as a client backing off would, so refusals cannot flood the run
                await asyncio.sleep(self._pause_after_error)

    async def _grpc(self, kind: Kind, user_id: str, key: str) -> tuple[str, str, str]:
        assert self._channel is not None
        call: Any
        if kind.transport == "grpc-typed":
            call = images_pb2_grpc.ImagesServiceStub(self._channel).Generate(
                images_pb2.GenerateRequest(
                    user_id=user_id,
                    payload=images_pb2.GeneratePayload(
                        model=IMAGE_PAYLOAD["model"],
                        prompt=IMAGE_PAYLOAD["prompt"],
                        image_name=IMAGE_PAYLOAD["image_name"],
                    ),
                    idempotency_key=key,
                ),
                timeout=self.deadline,
            )
        else:
            payload = struct_pb2.Struct()
            payload.update(_payload(kind))
            call = gateway_pb2_grpc.TaskGatewayServiceStub(self._channel).Publish(
                gateway_pb2.PublishRequest(
                    user_id=user_id, task_type=kind.task_type, payload=payload, idempotency_key=key
                ),
                timeout=self.deadline,
            )
        try:
            async with asyncio.timeout(self.deadline + self.margin):
                response = await call
        except grpc.aio.AioRpcError as error:
            return error.code().name, "", error.details() or ""
        except TimeoutError:
            call.cancel()
            return "HANG", "", f"no answer within {self.deadline + self.margin}s"
        return "OK", response.task_key, ""

    async def _rest(self, kind: Kind, user_id: str, key: str) -> tuple[str, str, str]:
        assert self._session is not None
        body = {
            "user_id": user_id,
            "task_type": kind.task_type,
            "payload": _payload(kind),
            "idempotency_key": key,
        }
        headers = {"Grpc-Timeout": f"{round(self.deadline * 1000)}m"}
        try:
            async with (
                asyncio.timeout(self.deadline + self.margin),
                self._session.post(self._publish_url, json=body, headers=headers) as response,
            ):
                text = await response.text()
        except aiohttp.ClientConnectorError as exc:
            return "HTTP_CONNECT_ERROR", "", str(exc)
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            return "HTTP_DISCONNECTED", "", f"{type(exc).__name__}: {exc}"
        except aiohttp.ClientPayloadError as exc:
            return "HTTP_DISCONNECTED", "", f"{type(exc).__name__}: {exc}"
        except TimeoutError:
            return "HANG", "", f"no answer within {self.deadline + self.margin}s"
        if response.status == 200:
            return "OK", json.loads(text)["task_key"], ""
        with contextlib.suppress(ValueError, KeyError, TypeError):
            text = json.loads(text)["message"]
        return f"HTTP_{response.status}", "", text


def _payload(kind: Kind) -> dict[str, str]:
    return IMAGE_PAYLOAD if kind.task_type.startswith("images.") else VIDEO_PAYLOAD


class HealthWatch:
    """grpc.health.v1 Health/Watch on the overall service, every status it streams recorded."""

    def __init__(self, grpc_address: str) -> None:
        self._address = grpc_address
        self.statuses: list[tuple[float, int]] = []
        self._changed = asyncio.Condition()
        self._channel: grpc.aio.Channel | None = None
        self._task: asyncio.Task[None] | None = None
        self.ended: str | None = None

    async def __aenter__(self) -> HealthWatch:
        self._channel = grpc.aio.insecure_channel(self._address)
        self._task = asyncio.create_task(self._watch(), name="health-watch")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._task is not None
        assert self._channel is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self._channel.close(None)

    def mark(self) -> int:
        """A position: `wait_for(..., since=mark)` looks only at statuses streamed after it."""
        return len(self.statuses)

    @property
    def latest(self) -> int | None:
        return self.statuses[-1][1] if self.statuses else None

    async def wait_for(self, wanted: int, *, since: int = 0, timeout: float = 30.0) -> float:
        """Wait until the stream sent `wanted` after position `since`; when it did (monotonic)."""

        def seen() -> bool:
            return any(status == wanted for _, status in self.statuses[since:])

        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(lambda: seen() or self.ended is not None)
        except TimeoutError:
            raise TimeoutError(
                f"health never turned {health_pb2.HealthCheckResponse.ServingStatus.Name(wanted)}"
                f" within {timeout}s; streamed: {self.names()}"
            ) from None
        if not seen():
            raise AssertionError(f"the health stream ended ({self.ended}): {self.names()}")
        return next(at for at, status in self.statuses[since:] if status == wanted)

    def names(self) -> list[str]:
        return [health_pb2.HealthCheckResponse.ServingStatus.Name(s) for _, s in self.statuses]

    async def _watch(self) -> None:
        assert self._channel is not None
        stream = health_pb2_grpc.HealthStub(self._channel).Watch(
            health_pb2.HealthCheckRequest(service="")
        )
        try:
            async for response in stream:
                async with self._changed:
                    self.statuses.append((time.monotonic(), response.status))
                    self._changed.notify_all()
        except grpc.aio.AioRpcError as error:
            reason = error.code().name
        else:
            reason = "OK"
        async with self._changed:
            self.ended = reason
            self._changed.notify_all()
