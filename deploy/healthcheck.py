"""The image's HEALTHCHECK: exit 0 when the gateway's `/healthz` answers 200, else 1.

    python healthcheck.py [URL]

Without a URL it probes the admin listener when `TASK_GATEWAY__ADMIN__ADDRESS` is set, else
the HTTP listener (`TASK_GATEWAY__SERVER__ADDRESS`, default 0.0.0.0:10010), on this host.
Standard library only: the image has no curl, and importing the gateway would cost a second
of CPU on every probe.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

_ANY_HOST = {"", "0.0.0.0", "::", "[::]"}


def default_url(environ: dict[str, str]) -> str:
    """`http://<listener>/healthz`, the wildcard host replaced by the loopback address."""
    address = environ.get("TASK_GATEWAY__ADMIN__ADDRESS") or environ.get(
        "TASK_GATEWAY__SERVER__ADDRESS", "0.0.0.0:10010"
    )
    host, _, port = address.rpartition(":")
    return f"http://{'127.0.0.1' if host in _ANY_HOST else host}:{port}/healthz"


def main(argv: list[str]) -> int:
    url = argv[0] if argv else default_url(dict(os.environ))
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            status = response.status
    except (urllib.error.URLError, OSError) as exc:
        print(f"healthcheck: {url}: {exc}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"healthcheck: {url}: HTTP {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
