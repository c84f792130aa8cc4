"""What the contracts say about task RPCs, read from the descriptors of the generated modules.

A typed task RPC carries the `taskgateway.v1.route` option, which names its task type; its
request has `user_id`, `payload` and `idempotency_key`, its response a `task_key`. So a
request message tells which RPC to call, and a task type which payload message it carries,
with no table kept by hand: a task type added to the contracts works here once
`task-gateway-api` is upgraded.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import taskgateway_api
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FileDescriptor, MethodDescriptor
from google.protobuf.message import Message
from taskgateway_api.taskgateway.v1 import options_pb2

__all__ = ["TaskRpc", "payload_types", "task_rpc"]

# protoc's stubs type extensions as plain FieldDescriptors, which mypy cannot index with.
_ROUTE_OPTION: Any = options_pb2.route


@dataclass(frozen=True)
class TaskRpc:
    """A typed task RPC: its wire name, its response message, its task type and the payload
    message its request carries."""

    path: str  # /images.v1.ImagesService/Generate
    response_type: type[Message]
    task_type: str
    payload_type: type[Message]


def task_rpc(request: Descriptor) -> TaskRpc:
    """The task RPC that takes this request message, or TypeError naming the ones that exist."""
    rpc = _rpcs_in(request.file).get(request.full_name)
    if rpc is None:
        known = ", ".join(sorted(_all_rpcs())) or "none"
        raise TypeError(
            f"{request.full_name} is not the request of a task RPC (an RPC with the "
            f"taskgateway.v1.route option); the typed requests are: {known}. "
            "Send other task types with publish(task_type, user_id, payload)"
        )
    return rpc


@functools.cache
def payload_types() -> Mapping[str, type[Message]]:
    """The payload message of every typed task type, by task type."""
    return MappingProxyType({rpc.task_type: rpc.payload_type for rpc in _all_rpcs().values()})


@functools.cache
def _all_rpcs() -> dict[str, TaskRpc]:
    rpcs: dict[str, TaskRpc] = {}
    for file in _contract_files():
        rpcs.update(_rpcs_in(file))
    return rpcs


@functools.cache
def _rpcs_in(file: FileDescriptor) -> dict[str, TaskRpc]:
    """The task RPCs of one proto file, by the full name of their request message."""
    return {method.input_type.full_name: _task_rpc(method) for method in _task_methods(file)}


def _task_rpc(method: MethodDescriptor) -> TaskRpc:
    payload = method.input_type.fields_by_name["payload"].message_type
    assert payload is not None  # typed requests carry a payload message
    return TaskRpc(
        path=f"/{method.containing_service.full_name}/{method.name}",
        response_type=message_factory.GetMessageClass(method.output_type),
        task_type=method.GetOptions().Extensions[_ROUTE_OPTION].task_type,
        payload_type=message_factory.GetMessageClass(payload),
    )


def _task_methods(file: FileDescriptor) -> list[MethodDescriptor]:
    return [
        method
        for service in file.services_by_name.values()
        for method in service.methods
        if method.GetOptions().HasExtension(_ROUTE_OPTION)
        and not (method.client_streaming or method.server_streaming)
    ]


@functools.cache
def _contract_files() -> tuple[FileDescriptor, ...]:
    """Every proto file of the installed contracts package (each generated `_pb2` module)."""
    names = [
        module.name
        for module in pkgutil.walk_packages(taskgateway_api.__path__, "taskgateway_api.")
        if module.name.endswith("_pb2")
    ]
    return tuple(importlib.import_module(name).DESCRIPTOR for name in sorted(names))
