"""The clients file of `auth.clients_file`: read at start, read again on SIGHUP and on change.

A file that cannot be read or parsed at start stops start-up naming the setting and the
entry. Later, a bad file (a half-written edit, a typo) keeps the last good clients in force
and logs why; the next good version replaces them.
"""

from __future__ import annotations

import asyncio
import contextlib
import tomllib
from pathlib import Path

import structlog

from gateway.core.auth import Client, Clients, parse_clients
from gateway.errors import ConfigError
from gateway.watched_files import file_signature, reload_on_change

__all__ = ["ClientsFile"]

log = structlog.get_logger(logger_name="gateway.auth")


class ClientsFile:
    def __init__(self, path: str) -> None:
        self._path = Path(path)
        self._seen: tuple[tuple[int, int, int] | None, ...] = ()
        self.clients = Clients(self._read())  # ConfigError: start-up stops
        self._watcher: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Watch the file for changes from now on."""
        self._watcher = asyncio.create_task(
            reload_on_change(self._changed, self.reload), name="clients file watcher"
        )

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher

    def reload(self) -> None:
        """Read the file again (SIGHUP); keep the clients in force if it is bad."""
        try:
            clients = self._read()
        except ConfigError as exc:
            log.error("kept the clients in force: the clients file is bad", error=str(exc))
            return
        self.clients.replace(clients)
        log.info("clients file loaded", clients=len(clients))

    def _read(self) -> tuple[Client, ...]:
        where = f"auth.clients_file ({self._path})"
        try:
            self._seen = file_signature([self._path])
            raw = tomllib.loads(self._path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read it: {exc.strerror}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{where}: not valid TOML: {exc}") from None
        return parse_clients(raw, where)

    def _changed(self) -> bool:
        return file_signature([self._path]) != self._seen
