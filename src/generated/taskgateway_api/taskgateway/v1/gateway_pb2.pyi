from google.api import annotations_pb2 as _annotations_pb2
from google.protobuf import any_pb2 as _any_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.rpc import status_pb2 as _status_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PublishRequest(_message.Message):
    __slots__ = ("user_id", "task_type", "payload", "idempotency_key")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_TYPE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    task_type: str
    payload: _struct_pb2.Struct
    idempotency_key: str
    def __init__(self, user_id: _Optional[str] = ..., task_type: _Optional[str] = ..., payload: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class PublishResponse(_message.Message):
    __slots__ = ("task_key",)
    TASK_KEY_FIELD_NUMBER: _ClassVar[int]
    task_key: str
    def __init__(self, task_key: _Optional[str] = ...) -> None: ...

class ListTaskTypesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TaskType(_message.Message):
    __slots__ = ("task_type", "exchange", "routing_key", "service_name", "rpc")
    TASK_TYPE_FIELD_NUMBER: _ClassVar[int]
    EXCHANGE_FIELD_NUMBER: _ClassVar[int]
    ROUTING_KEY_FIELD_NUMBER: _ClassVar[int]
    SERVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    RPC_FIELD_NUMBER: _ClassVar[int]
    task_type: str
    exchange: str
    routing_key: str
    service_name: str
    rpc: str
    def __init__(self, task_type: _Optional[str] = ..., exchange: _Optional[str] = ..., routing_key: _Optional[str] = ..., service_name: _Optional[str] = ..., rpc: _Optional[str] = ...) -> None: ...

class ListTaskTypesResponse(_message.Message):
    __slots__ = ("task_types",)
    TASK_TYPES_FIELD_NUMBER: _ClassVar[int]
    task_types: _containers.RepeatedCompositeFieldContainer[TaskType]
    def __init__(self, task_types: _Optional[_Iterable[_Union[TaskType, _Mapping]]] = ...) -> None: ...

class GetTaskTypeSchemaRequest(_message.Message):
    __slots__ = ("task_type",)
    TASK_TYPE_FIELD_NUMBER: _ClassVar[int]
    task_type: str
    def __init__(self, task_type: _Optional[str] = ...) -> None: ...

class GetTaskTypeSchemaResponse(_message.Message):
    __slots__ = ("task_type", "json_schema")
    TASK_TYPE_FIELD_NUMBER: _ClassVar[int]
    JSON_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    task_type: str
    json_schema: _struct_pb2.Struct
    def __init__(self, task_type: _Optional[str] = ..., json_schema: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class TaskEntry(_message.Message):
    __slots__ = ("publish", "typed")
    PUBLISH_FIELD_NUMBER: _ClassVar[int]
    TYPED_FIELD_NUMBER: _ClassVar[int]
    publish: PublishRequest
    typed: _any_pb2.Any
    def __init__(self, publish: _Optional[_Union[PublishRequest, _Mapping]] = ..., typed: _Optional[_Union[_any_pb2.Any, _Mapping]] = ...) -> None: ...

class TaskResult(_message.Message):
    __slots__ = ("index", "task_key", "error")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TASK_KEY_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    index: int
    task_key: str
    error: _status_pb2.Status
    def __init__(self, index: _Optional[int] = ..., task_key: _Optional[str] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ...) -> None: ...

class PublishBatchRequest(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[TaskEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[TaskEntry, _Mapping]]] = ...) -> None: ...

class PublishBatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[TaskResult]
    def __init__(self, results: _Optional[_Iterable[_Union[TaskResult, _Mapping]]] = ...) -> None: ...

class PublishStreamRequest(_message.Message):
    __slots__ = ("entry",)
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    entry: TaskEntry
    def __init__(self, entry: _Optional[_Union[TaskEntry, _Mapping]] = ...) -> None: ...

class PublishStreamResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[TaskResult]
    def __init__(self, results: _Optional[_Iterable[_Union[TaskResult, _Mapping]]] = ...) -> None: ...
