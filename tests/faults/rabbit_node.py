"""A private RabbitMQ node for fault injection: stopped, killed, alarmed and broken at will.

The node runs the installed `rabbitmq-server` under a name, AMQP port, Erlang distribution port,
Erlang cookie and data, log and config directories of its own, so nothing a test does to it can
reach the shared broker at 127.0.0.1:5672: every `rabbitmqctl` call names this node and carries
this node's cookie (a private HOME), which the shared node would refuse.

It boots with `deploy/rabbitmq/definitions.json`, loaded the way `deploy/rabbitmq/rabbitmq.conf`
loads it (`definitions.local.path`, `local_filesystem` backend), plus a test user.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import contextlib
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import time
from pathlib import Path

import aio_pika

__all__ = ["RabbitNode", "find_scripts"]

# Variables of the caller's environment that would point the node at another configuration.
_INHERITED_PREFIXES = ("RABBITMQ_", "ERL_")
_BOOT_TIMEOUT_SECONDS = 90.0
_STOP_TIMEOUT_SECONDS = 30.0
_CTL_TIMEOUT_SECONDS = 60.0
_EPMD_PORT = 4369
# Listen on the loopback interface only, for the node's distribution and the CLI's.
_LOOPBACK_DIST = "-kernel inet_dist_use_interface {127,0,0,1}"


# Every node started: any still running at interpreter exit (a run that died without its
# fixture's teardown) is killed then, so no node outlives pytest.
_STARTED: list[asyncio.subprocess.Process] = []


@atexit.register
def _kill_leftovers() -> None:
    for process in _STARTED:
        if process.returncode is None:  # not reaped: the pid is still the node's
            for member in _process_tree(process.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(member, signal.SIGKILL)


def find_scripts() -> tuple[Path, Path] | None:
    """`rabbitmq-server` and `rabbitmqctl` as scripts this user can run with its own environment.

    Debian's /usr/sbin entries are a wrapper that, run as root, re-executes the real script as
    the `rabbitmq` user through `su`, which can neither read pytest's private tmp directory nor
    see the node's own HOME and cookie; the real scripts sit next to that wrapper.
    """
    found = []
    for name in ("rabbitmq-server", "rabbitmqctl"):
        on_path = shutil.which(name)
        if on_path is None:
            return None
        real = Path(os.path.realpath(on_path))
        if real.name != name and (real.parent / name).is_file():
            real = real.parent / name
        found.append(real)
    return found[0], found[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _password_hash(password: str) -> str:
    """RabbitMQ's rabbit_password_hashing_sha256: base64(salt + sha256(salt + password))."""
    salt = secrets.token_bytes(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


class RabbitNode:
    """One private RabbitMQ node under `base`; async, so the event loop (and the gateway in it)
    keeps running while the node boots, stops or answers `rabbitmqctl`."""

    def __init__(self, base: Path, definitions: Path) -> None:
        scripts = find_scripts()
        if scripts is None:
            raise RuntimeError("rabbitmq-server or rabbitmqctl is not on PATH")
        self._server_script, self._ctl_script = scripts
        self.base = base
        self.node = f"gwtest-{secrets.token_hex(4)}@localhost"
        self.amqp_port = free_port()
        self.dist_port = free_port()
        self.user = "gwtest"
        self._password = secrets.token_urlsafe(16)
        self.boot_seconds: list[float] = []
        self._process: asyncio.subprocess.Process | None = None
        self._env = self._write_files(definitions)

    @property
    def url(self) -> str:
        return f"amqp://{self.user}:{self._password}@127.0.0.1:{self.amqp_port}/"

    @property
    def log_file(self) -> Path:
        return self.base / "log" / f"{self.node}.log"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    def _write_files(self, definitions: Path) -> dict[str, str]:
        base = self.base
        home = base / "home"
        for directory in (home, base / "mnesia", base / "log"):
            directory.mkdir(parents=True, exist_ok=True)
        cookie = home / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(20).upper())
        cookie.chmod(0o400)
        # The deploy definitions verbatim plus a user of the test's own (the deploy file's
        # guest only logs in over loopback, as RabbitMQ's default one); RabbitMQ 3.10 reads
        # one definitions file (a directory fails with eisdir).
        loaded = json.loads(definitions.read_text())
        loaded.setdefault("users", []).append(
            {
                "name": self.user,
                "password_hash": _password_hash(self._password),
                "hashing_algorithm": "rabbit_password_hashing_sha256",
                "tags": ["administrator"],
            }
        )
        loaded.setdefault("permissions", []).append(
            {"user": self.user, "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}
        )
        (base / "definitions.json").write_text(json.dumps(loaded, indent=2))
        (base / "rabbitmq.conf").write_text(
            "\n".join(
                [
                    f"listeners.tcp.1 = 127.0.0.1:{self.amqp_port}",
                    f"definitions.local.path = {base / 'definitions.json'}",
                    "definitions.import_backend = local_filesystem",
                    "vm_memory_high_watermark.relative = 0.4",
                    "log.console = false",
                    "log.file.level = info",
                    "",
                ]
            )
        )
        (base / "advanced.config").write_text("[].\n")
        (base / "enabled_plugins").write_text("[].\n")
        (base / "rabbitmq-env.conf").write_text("")
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(_INHERITED_PREFIXES)
        }
        env.update(
            HOME=str(home),
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.amqp_port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_BASE=str(base),
            RABBITMQ_CONF_ENV_FILE=str(base / "rabbitmq-env.conf"),
            RABBITMQ_CONFIG_FILE=str(base / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(base / "advanced.config"),
            RABBITMQ_MNESIA_BASE=str(base / "mnesia"),
            RABBITMQ_LOG_BASE=str(base / "log"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(base / "enabled_plugins"),
            RABBITMQ_PLUGINS_EXPAND_DIR=str(base / "plugins-expand"),
            RABBITMQ_PID_FILE=str(base / "node.pid"),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=_LOOPBACK_DIST,
            RABBITMQ_CTL_ERL_ARGS=_LOOPBACK_DIST,
            ERL_EPMD_ADDRESS="127.0.0.1",
        )
        return env

    async def start(self) -> float:
        """Boot the node and wait until it serves AMQP with its definitions; the boot seconds."""
        if self.running:
            raise RuntimeError(f"{self.node} is already running")
        await self._wait_gone()
        started = time.monotonic()
        with (self.base / "node.out").open("ab") as out:
            self._process = await asyncio.create_subprocess_exec(
                str(self._server_script),
                cwd=self.base,
                env=self._env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        _STARTED.append(self._process)
        await self.wait_ready()
        self.boot_seconds.append(time.monotonic() - started)
        return self.boot_seconds[-1]

    async def wait_ready(self, timeout: float = _BOOT_TIMEOUT_SECONDS) -> None:
        """Poll (bounded) until an AMQP client can log in and see the definitions' queues."""
        deadline = time.monotonic() + timeout
        last_error: BaseException | None = None
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(f"{self.node} exited while booting:\n{self.log_tail()}")
            if not _accepts(self.amqp_port):
                await asyncio.sleep(0.1)
                continue
            try:
                connection = await aio_pika.connect(self.url, timeout=2)
                try:
                    channel = await connection.channel()
                    for queue in ("images.queue", "videos.queue"):
                        await channel.declare_queue(queue, passive=True)
                    return
                finally:
                    await connection.close()
            except Exception as exc:  # not listening yet, or definitions not loaded yet
                last_error = exc
            await asyncio.sleep(0.1)
        raise TimeoutError(
            f"{self.node} not ready after {timeout}s ({last_error!r}):\n{self.log_tail()}"
        )

    async def stop(self) -> None:
        """Stop gracefully (`rabbitmqctl stop`) and wait for the VM to exit; kill if it hangs."""
        if not self.running:
            return
        assert self._process is not None
        try:
            await self.ctl("stop", timeout=_STOP_TIMEOUT_SECONDS)
            await asyncio.wait_for(self._process.wait(), _STOP_TIMEOUT_SECONDS)
        except (RuntimeError, TimeoutError):
            await self.kill()
        await self._wait_gone()

    async def kill(self) -> None:
        """SIGKILL the whole process tree at once: the start script, beam.smp and its helpers."""
        if self._process is None or self._process.returncode is not None:
            return  # reaped: its pid may already belong to another process
        tree = _process_tree(self._process.pid)
        for pid in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._process.pid, signal.SIGKILL)
        await asyncio.wait_for(self._process.wait(), _STOP_TIMEOUT_SECONDS)
        deadline = time.monotonic() + _STOP_TIMEOUT_SECONDS
        while any(_alive(pid) for pid in tree):
            if time.monotonic() > deadline:
                raise RuntimeError(f"processes of {self.node} survived SIGKILL: {tree}")
            await asyncio.sleep(0.05)
        await self._wait_gone()

    async def restart(self) -> float:
        await self.stop()
        return await self.start()

    async def ctl(self, *args: str, timeout: float = _CTL_TIMEOUT_SECONDS) -> str:
        """Run `rabbitmqctl -n <this node> ARGS`; its stdout, or RuntimeError with its stderr."""
        process = await asyncio.create_subprocess_exec(
            str(self._ctl_script),
            "-n",
            self.node,
            "-q",
            *args,
            cwd=self.base,
            env=self._env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} timed out after {timeout}s") from None
        if process.returncode != 0:
            raise RuntimeError(
                f"rabbitmqctl {' '.join(args)} failed ({process.returncode}): "
                f"{stderr.decode(errors='replace').strip() or stdout.decode(errors='replace')}"
            )
        return stdout.decode()

    async def close_all_connections(self) -> None:
        await self.ctl("close_all_connections", "fault injection by the test suite")

    async def set_memory_alarm(self, on: bool) -> None:
        """Raise the memory alarm (watermark 0 blocks every publisher) or clear it (0.4)."""
        await self.ctl("set_vm_memory_high_watermark", "0" if on else "0.4")

    async def close(self) -> None:
        """Stop the node whatever state it is in; leave no process behind."""
        try:
            await self.stop()
        finally:
            await self.kill()

    def log_tail(self, lines: int = 40) -> str:
        texts = []
        for path in (self.base / "node.out", self.log_file):
            if path.exists():
                texts.append(
                    f"--- {path}\n"
                    + "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
                )
        return "\n".join(texts)

    async def _wait_gone(self) -> None:
        """Wait (bounded) until the AMQP port is closed and epmd forgot the node's name."""
        deadline = time.monotonic() + _STOP_TIMEOUT_SECONDS
        short_name = self.node.partition("@")[0]
        while _accepts(self.amqp_port) or short_name in await _epmd_names():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.node} still registered or listening after it stopped")
            await asyncio.sleep(0.05)


def _process_tree(root: int) -> list[int]:
    """`root` and its descendants, from /proc (Linux); just `root` elsewhere."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            ppid = int(stat.rpartition(")")[2].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    tree, pending = [], [root]
    while pending:
        pid = pending.pop()
        tree.append(pid)
        pending.extend(children.get(pid, []))
    return tree


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent to reap it counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _accepts(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


async def _epmd_names() -> str:
    """epmd's NAMES answer ("name gwtest-… at port …" lines); empty when epmd is not running."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", _EPMD_PORT), 2)
    except (OSError, TimeoutError):
        return ""
    try:
        writer.write(b"\x00\x01n")  # NAMES_REQ: length 1, request 110
        data = await asyncio.wait_for(reader.read(), 2)
        return data[4:].decode(errors="replace")
    finally:
        writer.close()
