"""One RPC the gateway serves: its descriptor, its message types and its handler.

A handler is a transport-free function of (request message, call context): unary methods
return the response, streaming methods take the requests as an async iterator and yield the
responses. Transports look methods up by wire name and only adapt their own wire format.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message

from gateway.core.context import CallContext

__all__ = ["Method", "StreamHandler", "UnaryHandler"]

UnaryHandler = Callable[[Any, CallContext], Awaitable[Message]]
StreamHandler = Callable[[AsyncIterator[Any], CallContext], AsyncIterator[Message]]


@dataclass(frozen=True)
class Method:
    descriptor: MethodDescriptor
    request_type: type[Message]
    response_type: type[Message]
    # A UnaryHandler, or a StreamHandler when the method streams both ways.
    handler: Any

    @classmethod
    def of(cls, descriptor: MethodDescriptor, handler: Any) -> Method:
        return cls(
            descriptor=descriptor,
            request_type=message_factory.GetMessageClass(descriptor.input_type),
            response_type=message_factory.GetMessageClass(descriptor.output_type),
            handler=handler,
        )

    @property
    def full_name(self) -> str:
        """As gRPC names it on the wire: /package.Service/Method."""
        return f"/{self.descriptor.containing_service.full_name}/{self.descriptor.name}"

    @property
    def service(self) -> str:
        """The service's full name: images.v1.ImagesService."""
        return str(self.descriptor.containing_service.full_name)

    @property
    def name(self) -> str:
        """The method's own name: Generate."""
        return str(self.descriptor.name)

    @property
    def streaming(self) -> bool:
        return bool(self.descriptor.client_streaming)
