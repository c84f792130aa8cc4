"""Tasks as the legacy service made them: task id, task key and message body.

The body is exactly the legacy `PublishMessage`:
`{"task_id": "<uuid>", "user_id": "...", "task_type": "...", "payload": {...}}`, compact
JSON in UTF-8, as serde_json wrote it.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

__all__ = ["TASK_ID_NAMESPACE", "message_body", "new_task_id", "task_key"]

# UUIDv5 namespace of idempotent task ids. Never change it: a retry after an upgrade must
# still produce the task id its first attempt got.
TASK_ID_NAMESPACE = uuid.UUID("6f1c3e52-9a0b-5d47-8e21-4b7d2c9f0a13")


def new_task_id(user_id: str, task_type: str, idempotency_key: str = "") -> str:
    """A random UUID, or with an idempotency key a UUIDv5 of (user_id, task_type, key)."""
    if not idempotency_key:
        return str(uuid.uuid4())
    # JSON keeps the three parts apart whatever characters the key holds.
    name = json.dumps([user_id, task_type, idempotency_key], ensure_ascii=False)
    return str(uuid.uuid5(TASK_ID_NAMESPACE, name))


def task_key(user_id: str, service_name: str, task_id: str) -> str:
    return f"{user_id}:{service_name}:{task_id}"


def message_body(task_id: str, user_id: str, task_type: str, payload: Any) -> bytes:
    return json.dumps(
        {"task_id": task_id, "user_id": user_id, "task_type": task_type, "payload": payload},
        ensure_ascii=False,
        separators=(",", ":"),
        allow_nan=False,
    ).encode()
