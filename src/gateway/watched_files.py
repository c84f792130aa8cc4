"""Files the gateway re-reads when they change on disk: the clients file, TLS certificates.

Polled, not watched with inotify: Kubernetes updates a mounted Secret by swapping a symlink,
which a stat of the path sees and a watch on the old file does not.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = ["file_signature", "reload_on_change"]

# How often the files that settings name (auth.clients_file, the TLS files) are looked at.
_WATCH_SECONDS = 1.0


def file_signature(paths: Iterable[str | Path]) -> tuple[tuple[int, int, int] | None, ...]:
    """What replacing, rewriting or removing any of the files changes: each one's inode, mtime
    and size, None while it is missing (stat follows the symlinks Kubernetes swaps)."""
    found: list[tuple[int, int, int] | None] = []
    for path in paths:
        try:
            stat = os.stat(path)
        except OSError:
            found.append(None)
        else:
            found.append((stat.st_ino, stat.st_mtime_ns, stat.st_size))
    return tuple(found)


async def reload_on_change(changed: Callable[[], bool], reload: Callable[[], None]) -> None:
    """Every second, `reload()` when `changed()`; until cancelled (a file watcher's task)."""
    while True:
        await asyncio.sleep(_WATCH_SECONDS)
        if changed():
            reload()
