from google.api import annotations_pb2 as _annotations_pb2
from taskgateway_api.taskgateway.v1 import options_pb2 as _options_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GeneratePayload(_message.Message):
    __slots__ = ("model", "prompt", "image_name", "negative_prompt", "width", "height", "seed")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_NAME_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_PROMPT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    model: str
    prompt: str
    image_name: str
    negative_prompt: str
    width: int
    height: int
    seed: int
    def __init__(self, model: _Optional[str] = ..., prompt: _Optional[str] = ..., image_name: _Optional[str] = ..., negative_prompt: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., seed: _Optional[int] = ...) -> None: ...

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

class EditPayload(_message.Message):
    __slots__ = ("model", "prompt", "source_image_name", "image_name", "mask_image_name")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_IMAGE_NAME_FIELD_NUMBER: _ClassVar[int]
    IMAGE_NAME_FIELD_NUMBER: _ClassVar[int]
    MASK_IMAGE_NAME_FIELD_NUMBER: _ClassVar[int]
    model: str
    prompt: str
    source_image_name: str
    image_name: str
    mask_image_name: str
    def __init__(self, model: _Optional[str] = ..., prompt: _Optional[str] = ..., source_image_name: _Optional[str] = ..., image_name: _Optional[str] = ..., mask_image_name: _Optional[str] = ...) -> None: ...

class EditRequest(_message.Message):
    __slots__ = ("user_id", "payload", "idempotency_key")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    payload: EditPayload
    idempotency_key: str
    def __init__(self, user_id: _Optional[str] = ..., payload: _Optional[_Union[EditPayload, _Mapping]] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class EditResponse(_message.Message):
    __slots__ = ("task_key",)
    TASK_KEY_FIELD_NUMBER: _ClassVar[int]
    task_key: str
    def __init__(self, task_key: _Optional[str] = ...) -> None: ...
