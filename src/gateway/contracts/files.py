"""The generated contract modules the gateway serves.

Adding a task type to an existing domain needs no change here: the route table is read
from these files' descriptors. A new domain (a new .proto file) adds its module below.
"""

from __future__ import annotations

from google.protobuf.descriptor import FileDescriptor
from taskgateway_api.images.v1 import images_pb2
from taskgateway_api.taskgateway.v1 import gateway_pb2
from taskgateway_api.videos.v1 import videos_pb2

__all__ = ["CONTRACT_FILES", "GATEWAY_SERVICE"]

CONTRACT_FILES: tuple[FileDescriptor, ...] = (
    gateway_pb2.DESCRIPTOR,
    images_pb2.DESCRIPTOR,
    videos_pb2.DESCRIPTOR,
)

# The service of the generic (untyped) RPCs: Publish, and later batch, streaming and catalog.
GATEWAY_SERVICE = gateway_pb2.DESCRIPTOR.services_by_name["TaskGatewayService"]
