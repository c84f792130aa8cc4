"""One RPC the gateway serves: its descriptor, its message types and its handler.

A handler is a transport-free function of (request message, call context): unary methods
return the response, streaming methods take the requests as an async iterator and yield the
responses. Transports look methods up by wire name and only adapt their own wire format.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message

from gateway.core.context import CallContext
from gateway.errors import FieldViolation, GatewayError, invalid_argument

__all__ = ["Method", "StreamHandler", "UnaryHandler", "too_many_items"]

UnaryHandler = Callable[[Any, CallContext], Awaitable[Message]]
StreamHandler = Callable[[AsyncIterator[Any], CallContext], AsyncIterator[Message]]


@dataclass(frozen=True)
class Method:
    descriptor: MethodDescriptor
    request_type: type[Message]
    response_type: type[Message]
    # A UnaryHandler, or a StreamHandler when the method streams both ways.
    handler: Any
    # The most items each repeated field of the request may hold, by field name; a transport
    # may refuse a request over them before parsing it whole (too_many_items).
    limits: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def of(
        cls, descriptor: MethodDescriptor, handler: Any, limits: Mapping[str, int] | None = None
    ) -> Method:
        return cls(
            descriptor=descriptor,
            request_type=message_factory.GetMessageClass(descriptor.input_type),
            response_type=message_factory.GetMessageClass(descriptor.output_type),
            handler=handler,
            limits=limits or {},
        )

    def check_limits(self, counts: Mapping[str, int]) -> None:
        """INVALID_ARGUMENT naming the field when a count is over its limit."""
        for name, limit in self.limits.items():
            count = counts.get(name, 0)
            if count > limit:
                raise too_many_items(name, limit, count)

    # Derived from the descriptor once, as every call names its method.
    full_name: str = field(init=False)
    """As gRPC names it on the wire: /package.Service/Method."""
    service: str = field(init=False)
    """The service's full name: images.v1.ImagesService."""
    name: str = field(init=False)
    """The method's own name: Generate."""
    streaming: bool = field(init=False)

    def __post_init__(self) -> None:
        service = str(self.descriptor.containing_service.full_name)
        # The dataclass is frozen for its users; these are its own derived fields.
        object.__setattr__(self, "service", service)
        object.__setattr__(self, "name", str(self.descriptor.name))
        object.__setattr__(self, "full_name", f"/{service}/{self.descriptor.name}")
        object.__setattr__(self, "streaming", bool(self.descriptor.client_streaming))


def too_many_items(name: str, limit: int, count: int) -> GatewayError:
    return invalid_argument(
        [
            FieldViolation(
                name,
                f"at most {limit} items per request, got {count}; nothing was published: "
                "split the request (PublishStream takes any number of tasks)",
            )
        ]
    )
