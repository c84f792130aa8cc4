"""Small gRPC servers for the client tests: a proxy that drops answers, a scripted gateway, and
a gateway whose calls are reset.

They speak raw bytes through generic handlers, so they serve any method of the contracts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable
from concurrent import futures
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import grpc
from google.protobuf import duration_pb2
from google.protobuf.any_pb2 import Any as AnyProto
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

Context = grpc.aio.ServicerContext[bytes, bytes]


class _Server:
    """A grpc.aio server on a free port of 127.0.0.1 whose every unary method calls `_unary`."""

    def __init__(self) -> None:
        self._server = grpc.aio.server()
        self._server.add_generic_rpc_handlers([_AnyMethod(self._unary)])
        self.address = ""

    async def start(self, credentials: grpc.ServerCredentials | None = None) -> str:
        if credentials is None:
            port = self._server.add_insecure_port("127.0.0.1:0")
        else:
            port = self._server.add_secure_port("127.0.0.1:0", credentials)
        await self._server.start()
        self.address = f"127.0.0.1:{port}"
        return self.address

    async def stop(self) -> None:
        await self._server.stop(grace=None)

    async def _unary(self, method: str, request: bytes, context: Context) -> bytes:
        raise NotImplementedError


class _AnyMethod(grpc.GenericRpcHandler):
    def __init__(self, unary: Callable[[str, bytes, Context], Awaitable[bytes]]) -> None:
        self._unary = unary

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any]:
        method: str = details.method

        async def handle(request: bytes, context: Context) -> bytes:
            return await self._unary(method, request, context)

        return grpc.unary_unary_rpc_method_handler(handle)


class DroppingProxy(_Server):
    """Forwards every call to the gateway; drops the first `drops` answers after the gateway gave
    them, answering UNAVAILABLE instead, as a connection lost on the way back would."""

    def __init__(self, upstream: str, drops: int) -> None:
        super().__init__()
        self._upstream = grpc.aio.insecure_channel(upstream)
        self.drops = drops
        self.forwarded: list[str] = []

    async def stop(self) -> None:
        await super().stop()
        await self._upstream.close()

    async def _unary(self, method: str, request: bytes, context: Context) -> bytes:
        self.forwarded.append(method)
        try:
            answer: bytes = await self._upstream.unary_unary(method)(
                request, timeout=context.time_remaining(), metadata=context.invocation_metadata()
            )
        except grpc.aio.AioRpcError as error:
            await context.abort(error.code(), error.details() or "", error.trailing_metadata())
        if self.drops > 0:
            self.drops -= 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the test proxy dropped the answer")
        return answer


@dataclass(frozen=True)
class Call:
    """A call the fake gateway received."""

    method: str
    request: bytes
    metadata: dict[str, str]
    at: float  # time.monotonic()
    peer: str  # the client's address, e.g. ipv4:127.0.0.1:41234: one per connection


# Answers a call: the response bytes, or raises through context.abort.
Script = Callable[[Call, Context], Awaitable[bytes]]


class FakeGateway(_Server):
    """Answers each call as the test's script says and records every call."""

    def __init__(self, script: Script) -> None:
        super().__init__()
        self.script = script
        self.calls: list[Call] = []

    async def _unary(self, method: str, request: bytes, context: Context) -> bytes:
        metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        call = Call(method, request, metadata, time.monotonic(), context.peer())
        self.calls.append(call)
        return await self.script(call, context)


async def abort_with_status(
    context: Context,
    code: grpc.StatusCode,
    message: str,
    *,
    retry_delay: float | None = None,
) -> None:
    """End a call as the gateway does: the code, and a google.rpc.Status (with RetryInfo)."""
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=message)
    if retry_delay is not None:
        detail = AnyProto()
        delay = duration_pb2.Duration()
        delay.FromTimedelta(timedelta(seconds=retry_delay))
        detail.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        status.details.append(detail)
    grpc_status = rpc_status.to_status(status)
    await context.abort(grpc_status.code, grpc_status.details, grpc_status.trailing_metadata)


async def abort_with_garbled_details(call: Call, context: Context) -> bytes:
    """A script: the call fails with a grpc-status-details-bin that is no google.rpc.Status (a
    proxy's mangled trailer)."""
    trailer = (("grpc-status-details-bin", b"\xff\xff\xff"),)
    await context.abort(grpc.StatusCode.UNAVAILABLE, "upstream reset", trailer)
    return b""


class ResettingGateway:
    """A gateway whose first `resets` calls are cut off after they arrived, as a server or a
    proxy that resets the stream does (RST_STREAM CANCEL); the later ones get `answer`.

    A threaded grpc server, since grpc.aio's servicer context cannot reset a call.
    """

    def __init__(self, resets: int, answer: bytes) -> None:
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        self._server.add_generic_rpc_handlers([_SyncAnyMethod(self._unary)])
        self._resets = resets
        self._answer = answer
        self.requests: list[bytes] = []  # every call's request, in order
        self._lock = threading.Lock()
        self.address = f"127.0.0.1:{self._server.add_insecure_port('127.0.0.1:0')}"
        self._server.start()

    def stop(self) -> None:
        self._server.stop(grace=None)

    def _unary(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        with self._lock:
            self.requests.append(request)
            reset = len(self.requests) <= self._resets
        if reset:
            context.cancel()
        return self._answer


class _SyncAnyMethod(grpc.GenericRpcHandler):
    def __init__(self, unary: Callable[[bytes, grpc.ServicerContext], bytes]) -> None:
        self._unary = unary

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any]:
        return grpc.unary_unary_rpc_method_handler(self._unary)
