"""`python -m gateway`'s checks before it starts anything: the settings several workers need."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.app import main as entry

BROKER = {"TASK_GATEWAY__BROKER__ADDRESS": "amqp://guest:guest@127.0.0.1:5672/"}


@pytest.fixture
def started(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The worker counts the gateway would have been started with (nothing is started)."""
    monkeypatch.chdir(tmp_path)  # no config/<run_mode>.toml of the repository
    runs: list[int] = []

    def run_workers(settings: object, workers: int) -> int:
        runs.append(workers)
        return 0

    monkeypatch.setattr(entry, "run_workers", run_workers)
    monkeypatch.setattr(entry.metrics_dir, "prepare", lambda: tmp_path)
    return runs


@pytest.mark.parametrize(
    ("variable", "key", "address"),
    [
        ("TASK_GATEWAY__GRPC__ADDRESS", "grpc.address", "127.0.0.1:0"),
        ("TASK_GATEWAY__SERVER__ADDRESS", "server.address", "127.0.0.1:0"),
        ("TASK_GATEWAY__ADMIN__ADDRESS", "admin.address", "127.0.0.1:0"),
        ("TASK_GATEWAY__SERVER__ADDRESS", "server.address", "[::]:00"),
    ],
)
def test_port_0_with_several_workers_is_refused_naming_the_setting(
    variable: str,
    key: str,
    address: str,
    started: list[int],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """With SO_REUSEPORT each worker would bind a port of its own: exit 2, naming the setting."""
    for name, value in (BROKER | {variable: address}).items():
        monkeypatch.setenv(name, value)

    assert entry.main(["--workers", "2"]) == 2

    assert started == []
    error = capsys.readouterr().err
    assert f"configuration error: {key}: workers share one port" in error
    assert address in error


def test_port_0_with_one_worker_is_allowed(
    started: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One worker may take whatever port the system gives it, on every listener."""
    monkeypatch.setattr("gateway.app.server.serve_main", lambda settings: 0)
    for name, value in (BROKER | {"TASK_GATEWAY__ADMIN__ADDRESS": "127.0.0.1:0"}).items():
        monkeypatch.setenv(name, value)

    assert entry.main(["--workers", "1"]) == 0
