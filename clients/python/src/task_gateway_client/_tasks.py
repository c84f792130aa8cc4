"""One logical task, ready to send: the RPC to call and its request, carrying one idempotency key.

The key is the caller's, or one made here when the caller gave none; every attempt of the task
(and its entry in a batch) carries it, so the gateway derives the same task id each time.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

from google.protobuf import any_pb2, struct_pb2
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message
from taskgateway_api.taskgateway.v1 import gateway_pb2

from task_gateway_client._contracts import task_rpc

__all__ = ["PUBLISH", "PUBLISH_BATCH", "Task", "generic_task", "serialize", "typed_task"]

PUBLISH = "/taskgateway.v1.TaskGatewayService/Publish"
PUBLISH_BATCH = "/taskgateway.v1.TaskGatewayService/PublishBatch"


@dataclass(frozen=True)
class Task:
    """A task to publish: its RPC, its request message (key set), and its batch entry."""

    path: str
    request: Message
    response_type: type[Message]
    idempotency_key: str

    def entry(self) -> gateway_pb2.TaskEntry:
        """The task as an entry of PublishBatch: a generic task, or the typed request packed."""
        if isinstance(self.request, gateway_pb2.PublishRequest):
            return gateway_pb2.TaskEntry(publish=self.request)
        typed = any_pb2.Any()
        typed.Pack(self.request)
        return gateway_pb2.TaskEntry(typed=typed)


def typed_task(request: Message) -> Task:
    """A typed request (e.g. images_pb2.GenerateRequest) as a task for its RPC.

    The caller's message is not changed: when it has no idempotency_key, a copy gets one.
    """
    rpc = task_rpc(cast(Descriptor, request.DESCRIPTOR))
    key: str = getattr(request, "idempotency_key")  # noqa: B009 - every typed request has it
    if not key:
        key = _new_key()
        request = _copy(request)
        setattr(request, "idempotency_key", key)  # noqa: B010 - a field of the message
    return Task(rpc.path, request, rpc.response_type, key)


def generic_task(
    task_type: str, user_id: str, payload: Mapping[str, Any], idempotency_key: str | None
) -> Task:
    """A task of any task type with a JSON-like payload, for the generic Publish."""
    if not isinstance(payload, Mapping):
        raise TypeError(f"payload must be a dict (a JSON object), got {type(payload).__name__}")
    struct = struct_pb2.Struct()
    try:
        struct.update(payload)
    except (ValueError, TypeError) as exc:
        raise TypeError(
            f"payload is not JSON-like (dicts, lists, str, numbers, bool, None): {exc}"
        ) from None
    key = idempotency_key or _new_key()
    request = gateway_pb2.PublishRequest(
        user_id=user_id, task_type=task_type, payload=struct, idempotency_key=key
    )
    return Task(PUBLISH, request, gateway_pb2.PublishResponse, key)


def serialize(message: Message) -> bytes:
    """A request as grpc sends it (the channels' request_serializer)."""
    return message.SerializeToString()


def _new_key() -> str:
    return str(uuid.uuid4())


def _copy(request: Message) -> Message:
    copy = type(request)()
    copy.CopyFrom(request)
    return copy
