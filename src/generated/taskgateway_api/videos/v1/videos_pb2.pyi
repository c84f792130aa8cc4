from google.api import annotations_pb2 as _annotations_pb2
from taskgateway_api.taskgateway.v1 import options_pb2 as _options_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GeneratePayload(_message.Message):
    __slots__ = ("model", "prompt", "video_name", "duration_seconds", "aspect_ratio")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    VIDEO_NAME_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ASPECT_RATIO_FIELD_NUMBER: _ClassVar[int]
    model: str
    prompt: str
    video_name: str
    duration_seconds: int
    aspect_ratio: str
    def __init__(self, model: _Optional[str] = ..., prompt: _Optional[str] = ..., video_name: _Optional[str] = ..., duration_seconds: _Optional[int] = ..., aspect_ratio: _Optional[str] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("user_id", "payload", "idempotency_key")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    payload: GeneratePayload
    idempotency_key: str
    def __init__(self, user_id: _Optional[str] = ..., payload: _Optional[_Union[GeneratePayload, _Mapping]] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("task_key",)
    TASK_KEY_FIELD_NUMBER: _ClassVar[int]
    task_key: str
    def __init__(self, task_key: _Optional[str] = ...) -> None: ...

class AnimatePayload(_message.Message):
    __slots__ = ("model", "source_image_name", "prompt", "video_name", "duration_seconds")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SOURCE_IMAGE_NAME_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    VIDEO_NAME_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    model: str
    source_image_name: str
    prompt: str
    video_name: str
    duration_seconds: int
    def __init__(self, model: _Optional[str] = ..., source_image_name: _Optional[str] = ..., prompt: _Optional[str] = ..., video_name: _Optional[str] = ..., duration_seconds: _Optional[int] = ...) -> None: ...

class AnimateRequest(_message.Message):
    __slots__ = ("user_id", "payload", "idempotency_key")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    payload: AnimatePayload
    idempotency_key: str
    def __init__(self, user_id: _Optional[str] = ..., payload: _Optional[_Union[AnimatePayload, _Mapping]] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class AnimateResponse(_message.Message):
    __slots__ = ("task_key",)
    TASK_KEY_FIELD_NUMBER: _ClassVar[int]
    task_key: str
    def __init__(self, task_key: _Optional[str] = ...) -> None: ...
