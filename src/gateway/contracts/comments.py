"""The proto comments of the contracts, by element full name.

The generated `_pb2` modules drop source info, so the comments written in `proto/` (which the
design makes the source of truth for every description the gateway publishes: OpenAPI, JSON
Schema, the task catalog) are read from the descriptor set `make generate` writes next to them
with `--include_source_info`.

`SourceCodeInfo` addresses each element by a path of (field number, index) pairs into the
`FileDescriptorProto`; this module walks the file once and turns those paths into full names.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import taskgateway_api
from google.protobuf import descriptor_pb2
from google.protobuf.message import DecodeError

from gateway.errors import ConfigError

__all__ = ["DESCRIPTOR_SET", "Comments"]

DESCRIPTOR_SET = Path(taskgateway_api.__file__).with_name("contracts.binpb")
"""The descriptor set with source info that `make generate` writes into the contracts package."""

# Field numbers of descriptor.proto that SourceCodeInfo paths are made of.
_FILE_MESSAGE = descriptor_pb2.FileDescriptorProto.MESSAGE_TYPE_FIELD_NUMBER
_FILE_ENUM = descriptor_pb2.FileDescriptorProto.ENUM_TYPE_FIELD_NUMBER
_FILE_SERVICE = descriptor_pb2.FileDescriptorProto.SERVICE_FIELD_NUMBER
_FILE_EXTENSION = descriptor_pb2.FileDescriptorProto.EXTENSION_FIELD_NUMBER
_MESSAGE_FIELD = descriptor_pb2.DescriptorProto.FIELD_FIELD_NUMBER
_MESSAGE_NESTED = descriptor_pb2.DescriptorProto.NESTED_TYPE_FIELD_NUMBER
_MESSAGE_ENUM = descriptor_pb2.DescriptorProto.ENUM_TYPE_FIELD_NUMBER
_MESSAGE_EXTENSION = descriptor_pb2.DescriptorProto.EXTENSION_FIELD_NUMBER
_MESSAGE_ONEOF = descriptor_pb2.DescriptorProto.ONEOF_DECL_FIELD_NUMBER
_ENUM_VALUE = descriptor_pb2.EnumDescriptorProto.VALUE_FIELD_NUMBER
_SERVICE_METHOD = descriptor_pb2.ServiceDescriptorProto.METHOD_FIELD_NUMBER

_Path = tuple[int, ...]


class Comments:
    """Leading comments of messages, fields, oneofs, enums, enum values, services and methods.

    Elements are named by their full name ("images.v1.GeneratePayload.prompt",
    "images.v1.ImagesService.Generate"). An enum value is named after its enum
    ("pkg.Color.RED"): protobuf's own full name for it ("pkg.RED", C++ scoping) hides which
    enum it belongs to, and Python's EnumValueDescriptor has no full_name to look up anyway.
    """

    def __init__(self, files: Iterable[descriptor_pb2.FileDescriptorProto]) -> None:
        self._comments: dict[str, str] = {}
        for file in files:
            names = dict(_element_paths(file))
            for location in file.source_code_info.location:
                name = names.get(tuple(location.path))
                if name is not None and location.HasField("leading_comments"):
                    self._comments[name] = _clean(location.leading_comments)

    @classmethod
    def load(cls, path: Path = DESCRIPTOR_SET) -> Comments:
        """The comments of the descriptor set at `path` (by default the generated contracts')."""
        try:
            data = path.read_bytes()
        except OSError as error:
            raise ConfigError(
                f"cannot read the contracts' descriptor set {path}: {error.strerror}; "
                "run 'make generate'"
            ) from error
        try:
            descriptor_set = descriptor_pb2.FileDescriptorSet.FromString(data)
        except DecodeError as error:
            raise ConfigError(f"{path} is not a serialized FileDescriptorSet: {error}") from error
        return cls(descriptor_set.file)

    def of(self, full_name: str) -> str:
        """The element's leading comment, dedented and stripped; "" when it has none."""
        return self._comments.get(full_name, "")

    def __len__(self) -> int:
        return len(self._comments)


def _clean(comment: str) -> str:
    # protoc keeps the space after "//" and the newline of every line; dedent removes the first,
    # rstrip the rest, so multi-line comments come out as plain paragraphs.
    lines = [line.rstrip() for line in textwrap.dedent(comment).splitlines()]
    return "\n".join(lines).strip("\n")


def _element_paths(file: descriptor_pb2.FileDescriptorProto) -> Iterator[tuple[_Path, str]]:
    """(SourceCodeInfo path, full name) of every commentable element of the file."""
    prefix = f"{file.package}." if file.package else ""
    for index, message in enumerate(file.message_type):
        yield from _message_paths(message, (_FILE_MESSAGE, index), prefix + message.name)
    for index, enum in enumerate(file.enum_type):
        yield from _enum_paths(enum, (_FILE_ENUM, index), prefix + enum.name)
    for index, extension in enumerate(file.extension):
        yield (_FILE_EXTENSION, index), prefix + extension.name
    for index, service in enumerate(file.service):
        service_name = prefix + service.name
        yield (_FILE_SERVICE, index), service_name
        for method_index, method in enumerate(service.method):
            yield (
                (_FILE_SERVICE, index, _SERVICE_METHOD, method_index),
                f"{service_name}.{method.name}",
            )


def _message_paths(
    message: descriptor_pb2.DescriptorProto, path: _Path, full_name: str
) -> Iterator[tuple[_Path, str]]:
    yield path, full_name
    members: Mapping[int, Iterable[descriptor_pb2.FieldDescriptorProto]] = {
        _MESSAGE_FIELD: message.field,
        _MESSAGE_EXTENSION: message.extension,
    }
    for number, fields in members.items():
        for index, field in enumerate(fields):
            yield (*path, number, index), f"{full_name}.{field.name}"
    for index, oneof in enumerate(message.oneof_decl):
        yield (*path, _MESSAGE_ONEOF, index), f"{full_name}.{oneof.name}"
    for index, nested in enumerate(message.nested_type):
        yield from _message_paths(
            nested, (*path, _MESSAGE_NESTED, index), f"{full_name}.{nested.name}"
        )
    for index, enum in enumerate(message.enum_type):
        yield from _enum_paths(enum, (*path, _MESSAGE_ENUM, index), f"{full_name}.{enum.name}")


def _enum_paths(
    enum: descriptor_pb2.EnumDescriptorProto, path: _Path, full_name: str
) -> Iterator[tuple[_Path, str]]:
    yield path, full_name
    for index, value in enumerate(enum.value):
        yield (*path, _ENUM_VALUE, index), f"{full_name}.{value.name}"
