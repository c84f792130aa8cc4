"""gateway.app.clients_file: the clients file read again when it changes on disk."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import structlog

from gateway import watched_files
from gateway.app.clients_file import ClientsFile


def clients_toml(token: str) -> str:
    digest = hashlib.sha256(token.encode()).hexdigest()
    return f'[[clients]]\nname = "svc"\ntoken_sha256 = "{digest}"\ntask_types = ["images.*"]\n'


def replace(path: Path, text: str) -> None:
    """As Kubernetes replaces a mounted secret: a new file renamed over the old one."""
    new = path.with_suffix(".new")
    new.write_text(text, encoding="utf-8")
    os.replace(new, path)


async def until(condition: Callable[[], bool]) -> None:
    """Polls are every 10 ms here; 5 s only keeps a watcher that never reloads from hanging."""
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("not within 5 s")


async def test_a_replaced_file_is_in_force_and_a_bad_one_keeps_the_last_good(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new version replaces the clients within a poll; a broken one leaves them as they were."""
    monkeypatch.setattr(watched_files, "_WATCH_SECONDS", 0.01)
    path = tmp_path / "clients.toml"
    path.write_text(clients_toml("first"), encoding="utf-8")
    watched = ClientsFile(str(path))
    watched.start()
    try:
        replace(path, clients_toml("second"))
        await until(lambda: watched.clients.by_token("second") is not None)
        assert watched.clients.by_token("first") is None

        with structlog.testing.capture_logs() as logs:
            replace(path, "[[clients]\n")  # half an edit: not TOML
            await until(lambda: any(line["event"].startswith("kept the clients") for line in logs))
        assert watched.clients.by_token("second") is not None
    finally:
        await watched.stop()
