"""/docs in a real headless Chromium: Swagger UI renders the publish operation, offline.

Chromium's host resolver is pointed at nothing but 127.0.0.1, and its network log is read
back to prove that every request of the page stayed on this machine. The screenshot is kept
in build/artifacts/docs.png. Without Chromium the test skips on a laptop and fails in CI.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.conftest import ROOT, make_settings

ARTIFACTS = ROOT / "build" / "artifacts"


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    reason = "Chromium is not installed (Debian: apt-get install chromium)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


async def _run_chromium(*args: str, profile: Path) -> bytes:
    process = await asyncio.create_subprocess_exec(
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        # Any host but the gateway's resolves to nothing: the page must not need one.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=15000",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    stdout, _ = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, f"chromium exited {process.returncode}"
    return stdout


def _requests(net_log: Path) -> list[tuple[str, str]]:
    """(url, initiator) of every request Chromium started, from its NetLog.

    The page's own requests have the page's origin as initiator (or none, for the
    navigation); Chromium's background services (time, updates, sign-in) say
    "not an origin" and are no part of the page.
    """
    log = json.loads(net_log.read_text(encoding="utf-8", errors="replace"))
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    return [
        (event["params"]["url"], event["params"].get("initiator", ""))
        for event in log["events"]
        if event["type"] == start_job and "url" in event.get("params", {})
    ]


async def test_docs_page_shows_publish_operation_offline(
    start_gateway: Any, tmp_path: Path
) -> None:
    """Swagger UI at /docs lists POST /api/v1/broker/publish; no request leaves 127.0.0.1."""
    _chromium()
    running = await start_gateway(make_settings())
    docs = f"http://127.0.0.1:{running.gateway.http_port}/docs"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    net_log = tmp_path / "netlog.json"

    dom = await _run_chromium(
        f"--log-net-log={net_log}", "--dump-dom", docs, profile=tmp_path / "dom"
    )
    await _run_chromium(
        f"--screenshot={ARTIFACTS / 'docs.png'}",
        "--window-size=1280,1600",
        docs,
        profile=tmp_path / "shot",
    )

    rendered = dom.decode()
    assert "/api/v1/broker/publish" in rendered, "Swagger UI rendered the publish route"
    assert "opblock-summary-method" in rendered, "operations were rendered, not just the shell"
    origin = f"http://127.0.0.1:{running.gateway.http_port}"
    requests = _requests(net_log)
    page = [url for url, initiator in requests if initiator in ("", origin)]
    browser = [url for url, initiator in requests if initiator not in ("", origin)]
    assert f"{origin}/openapi.json" in page
    assert f"{origin}/docs/static/swagger-ui-bundle.js" in page
    assert {urlsplit(url).hostname for url in page} == {"127.0.0.1"}, page
    assert all(initiator == "not an origin" for url, initiator in requests if url in browser)
    assert (ARTIFACTS / "docs.png").stat().st_size > 10_000
