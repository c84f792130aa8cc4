"""gateway.core.tasks: task ids, task keys and the legacy message body."""

from __future__ import annotations

import json
import uuid

from gateway.core.tasks import TASK_ID_NAMESPACE, message_body, new_task_id, task_key


def test_task_id_without_key_is_a_random_uuid4() -> None:
    """Without an idempotency key the task id is a UUID4, different on every call."""
    first = new_task_id("alice", "images.generate")
    second = new_task_id("alice", "images.generate")

    assert uuid.UUID(first).version == 4
    assert str(uuid.UUID(first)) == first
    assert first != second


def test_task_id_with_key_is_a_stable_uuid5() -> None:
    """With an idempotency key the task id is a UUIDv5, the same on every call."""
    first = new_task_id("alice", "images.generate", "retry-1")

    assert uuid.UUID(first).version == 5
    assert new_task_id("alice", "images.generate", "retry-1") == first


def test_idempotent_task_ids_never_change() -> None:
    """The task id of a key is the one every earlier release gave it: retries rely on it."""
    assert uuid.UUID("6f1c3e52-9a0b-5d47-8e21-4b7d2c9f0a13") == TASK_ID_NAMESPACE
    pinned = {
        ("alice", "images.generate", "k"): "1d426cb7-110b-57cf-8873-3697a7bb07c1",
        ("ユーザー", "videos.animate", 'clé "quoted"'): "7899fd5b-eebd-5220-a92a-e619ba7a844e",
    }
    for (user_id, task_type, key), task_id in pinned.items():
        assert new_task_id(user_id, task_type, key) == task_id


def test_task_id_with_key_depends_on_every_part() -> None:
    """A different user id, task type or key gives a different idempotent task id."""
    base = new_task_id("alice", "images.generate", "k1")

    assert new_task_id("bob", "images.generate", "k1") != base
    assert new_task_id("alice", "images.edit", "k1") != base
    assert new_task_id("alice", "images.generate", "k2") != base


def test_task_id_parts_cannot_run_together() -> None:
    """Moving characters between user id, task type and key changes the task id."""
    assert new_task_id("ab", "c", "d") != new_task_id("a", "bc", "d")
    assert new_task_id("a", "b", "cd") != new_task_id("a", "bc", "d")


def test_task_key_format() -> None:
    """The task key is user_id:service_name:task_id."""
    assert task_key("alice", "image-generation", "0f0e") == "alice:image-generation:0f0e"


def test_message_body_is_compact_ordered_json() -> None:
    """The body is compact JSON with keys task_id, user_id, task_type, payload in that order."""
    body = message_body("id-1", "alice", "images.generate", {"model": "m", "width": 64})

    assert body == (
        b'{"task_id":"id-1","user_id":"alice","task_type":"images.generate",'
        b'"payload":{"model":"m","width":64}}'
    )
    assert list(json.loads(body)) == ["task_id", "user_id", "task_type", "payload"]


def test_message_body_keeps_non_ascii_as_utf8() -> None:
    """Non-ASCII text is written as UTF-8 bytes, not as \\u escapes."""
    body = message_body("id-1", "Jürgen", "images.generate", {"prompt": "猫 ☕"})

    assert "Jürgen".encode() in body
    assert "猫 ☕".encode() in body
    assert b"\\u" not in body
    assert json.loads(body.decode("utf-8"))["payload"] == {"prompt": "猫 ☕"}
