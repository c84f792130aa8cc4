"""gRPC server reflection, as both `grpc.reflection.v1` and `grpc.reflection.v1alpha`.

grpcio-reflection serves only v1alpha; newer grpcurl and `buf curl` ask for v1 first. The two
protocols have the same messages under another package name, so the same servicer answers v1:
its file descriptor (v1alpha's, renamed) is added to the pool so that v1 itself can be listed
and described, and the handler reads and writes v1alpha's messages, which are the same bytes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2

__all__ = ["V1ALPHA_SERVICE_NAME", "V1_SERVICE_NAME", "reflection_handlers"]

V1ALPHA_SERVICE_NAME: str = reflection.SERVICE_NAME
V1_SERVICE_NAME = "grpc.reflection.v1.ServerReflection"
_V1_FILE = "grpc/reflection/v1/reflection.proto"


def reflection_handlers(
    service_names: Iterable[str],
) -> dict[str, dict[str, grpc.RpcMethodHandler[Any, Any]]]:
    """Reflection v1 and v1alpha for `service_names` and themselves: handlers by service."""
    _register_v1_descriptor()
    names = [*service_names, V1_SERVICE_NAME, V1ALPHA_SERVICE_NAME]
    # grpcio-reflection exports its asyncio servicer at run time only (no stubs say so).
    servicer = reflection.aio.ReflectionServicer(names)  # type: ignore[attr-defined]
    return {
        service: {
            "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                servicer.ServerReflectionInfo,
                request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
                response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
            )
        }
        for service in (V1_SERVICE_NAME, V1ALPHA_SERVICE_NAME)
    }


def _register_v1_descriptor() -> None:
    pool: Any = descriptor_pool.Default()
    try:
        pool.FindFileByName(_V1_FILE)
        return  # registered by an earlier server in this process
    except KeyError:
        pass
    file = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(file)
    old, new = f".{file.package}.", ".grpc.reflection.v1."
    file.name = _V1_FILE
    file.package = "grpc.reflection.v1"
    file.ClearField("options")  # they name v1alpha's generated packages in other languages
    for message in file.message_type:
        for field in message.field:
            if field.type_name.startswith(old):
                field.type_name = new + field.type_name[len(old) :]
    for service in file.service:
        for method in service.method:
            method.input_type = new + method.input_type[len(old) :]
            method.output_type = new + method.output_type[len(old) :]
    pool.Add(file)
