"""A private RabbitMQ node for fault injection: stopped, killed, alarmed and broken at will.

The node runs the installed `rabbitmq-server` under a name, AMQP port, Erlang distribution port,
Erlang cookie and data, log and config directories of its own, so nothing a test does to it can
reach the shared broker at 127.0.0.1:5672: every `rabbitmqctl` call names this node and carries
this node's cookie (a private HOME), which the shared node would refuse.

It boots with a definitions file (`deploy/rabbitmq/definitions.json` for the fault suite),
loaded the way `deploy/rabbitmq/rabbitmq.conf` loads it (`definitions.local.path`,
`local_filesystem` backend), plus a test user. Optionally it also listens for AMQPS (`NodeTls`:
verify_peer, and the EXTERNAL mechanism of the `rabbitmq_auth_mechanism_ssl` plugin, enabled
in the node's own `enabled_plugins` file), and shares an Erlang cookie and its test user's
password with other nodes, for a cluster (`tests.support.rabbit_cluster`).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika

from tests.support import procs
from tests.support.ports import accepts, free_port

__all__ = ["NodeTls", "RabbitNode", "find_scripts"]

# Variables of the caller's environment that would point the node at another configuration.
_INHERITED_PREFIXES = ("RABBITMQ_", "ERL_")
_BOOT_TIMEOUT_SECONDS = 90.0
_STOP_TIMEOUT_SECONDS = 30.0
_CTL_TIMEOUT_SECONDS = 60.0
_EPMD_PORT = 4369
# Listen on the loopback interface only, for the node's distribution and the CLI's.
_LOOPBACK_DIST = "-kernel inet_dist_use_interface {127,0,0,1}"


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


def _password_hash(password: str) -> str:
    """RabbitMQ's rabbit_password_hashing_sha256: base64(salt + sha256(salt + password))."""
    salt = secrets.token_bytes(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


@dataclass(frozen=True)
class NodeTls:
    """An AMQPS listener: the node's certificate and key, the CA it verifies clients with, and
    the users that log in with a client certificate (EXTERNAL), named by its common name."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    certificate_users: Sequence[str] = ()


class RabbitNode:
    """One private RabbitMQ node under `base`; async, so the event loop (and the gateway in it)
    keeps running while the node boots, stops or answers `rabbitmqctl`.

    `definitions`: loaded at every boot (None: only the test user); `cookie` and `password`:
    the Erlang cookie and the test user's password, the same on every node of a cluster;
    `config`: more lines of rabbitmq.conf.
    """

    def __init__(
        self,
        base: Path,
        definitions: Path | None,
        *,
        tls: NodeTls | None = None,
        cookie: str | None = None,
        password: str | None = None,
        config: Sequence[str] = (),
    ) -> None:
        scripts = find_scripts()
        if scripts is None:
            raise RuntimeError("rabbitmq-server or rabbitmqctl is not on PATH")
        self._server_script, self._ctl_script = scripts
        self.base = base
        self.node = f"gwtest-{secrets.token_hex(4)}@localhost"
        self.amqp_port = free_port()
        self.amqps_port = free_port() if tls is not None else 0
        self.dist_port = free_port()
        self.user = "gwtest"
        self._password = password or secrets.token_urlsafe(16)
        self._cookie = cookie or secrets.token_hex(20).upper()
        self._tls = tls
        self._config = tuple(config)
        self.boot_seconds: list[float] = []
        self._child: procs.Child | None = None
        self._queues: tuple[str, ...] = ()  # what readiness waits for: the definitions' queues
        self._env = self._write_files(definitions)

    @property
    def url(self) -> str:
        return f"amqp://{self.user}:{self._password}@127.0.0.1:{self.amqp_port}/"

    def amqps_url(self, *, password: bool = True) -> str:
        """The AMQPS listener's URL: with the test user and its password, or with neither (for
        a client certificate's EXTERNAL login)."""
        if not self.amqps_port:
            raise RuntimeError(f"{self.node} has no AMQPS listener (no NodeTls)")
        login = f"{self.user}:{self._password}@" if password else ""
        return f"amqps://{login}127.0.0.1:{self.amqps_port}/"

    @property
    def ctl_line(self) -> str:
        """A shell line that runs rabbitmqctl against this node by hand (append the command)."""
        return f"HOME={self.base / 'home'} {self._ctl_script} -n {self.node}"

    @property
    def running_pid(self) -> int | None:
        """The node's Erlang VM (beam.smp): the process that listens on its AMQP port."""
        if not self.running:
            return None
        assert self._child is not None
        return procs.listening_pid(self.amqp_port, procs.process_tree(self._child.pid))

    @property
    def log_file(self) -> Path:
        return self.base / "log" / f"{self.node}.log"

    @property
    def running(self) -> bool:
        return self._child is not None and self._child.alive()

    def _write_files(self, definitions: Path | None) -> dict[str, str]:
        base = self.base
        home = base / "home"
        for directory in (home, base / "mnesia", base / "log"):
            directory.mkdir(parents=True, exist_ok=True)
        cookie = home / ".erlang.cookie"
        cookie.write_text(self._cookie)
        cookie.chmod(0o400)
        # The definitions verbatim plus a user of the test's own (the deploy file's guest only
        # logs in over loopback, as RabbitMQ's default one); RabbitMQ 3.10 reads one
        # definitions file (a directory fails with eisdir).
        loaded = json.loads(definitions.read_text()) if definitions is not None else {}
        self._queues = tuple(q["name"] for q in loaded.get("queues", []))
        loaded.setdefault("vhosts", [{"name": "/"}])
        users = [(self.user, _password_hash(self._password), ["administrator"])]
        # An empty password hash: no password logs in; the client certificate does (EXTERNAL).
        users += [(name, "", []) for name in (self._tls.certificate_users if self._tls else ())]
        for name, password_hash, tags in users:
            loaded.setdefault("users", []).append(
                {
                    "name": name,
                    "password_hash": password_hash,
                    "hashing_algorithm": "rabbit_password_hashing_sha256",
                    "tags": tags,
                }
            )
            loaded.setdefault("permissions", []).append(
                {"user": name, "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}
            )
        (base / "definitions.json").write_text(json.dumps(loaded, indent=2))
        config = [
            f"listeners.tcp.1 = 127.0.0.1:{self.amqp_port}",
            f"definitions.local.path = {base / 'definitions.json'}",
            "definitions.import_backend = local_filesystem",
            "vm_memory_high_watermark.relative = 0.4",
            "log.console = false",
            "log.file.level = info",
            *self._config,
        ]
        plugins = []
        if self._tls is not None:
            config += [
                f"listeners.ssl.default = 127.0.0.1:{self.amqps_port}",
                f"ssl_options.cacertfile = {self._tls.ca_file}",
                f"ssl_options.certfile = {self._tls.cert_file}",
                f"ssl_options.keyfile = {self._tls.key_file}",
                # A client certificate is checked when one is presented, and not required:
                # clients with a password log in over the same listener.
                "ssl_options.verify = verify_peer",
                "ssl_options.fail_if_no_peer_cert = false",
                "auth_mechanisms.1 = PLAIN",
                "auth_mechanisms.2 = AMQPLAIN",
                "auth_mechanisms.3 = EXTERNAL",
                "ssl_cert_login_from = common_name",
            ]
            plugins.append("rabbitmq_auth_mechanism_ssl")
        (base / "rabbitmq.conf").write_text("\n".join([*config, ""]))
        (base / "advanced.config").write_text("[].\n")
        (base / "enabled_plugins").write_text(f"[{','.join(plugins)}].\n")
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
        self._child = await procs.spawn(
            f"boot-{len(self.boot_seconds) + 1}",  # the start script's output, per boot
            [str(self._server_script)],
            log_dir=self.base,
            env=self._env,
            cwd=self.base,
        )
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
            if not accepts(self.amqp_port):
                await asyncio.sleep(0.1)
                continue
            try:
                connection = await aio_pika.connect(self.url, timeout=2)
                try:
                    channel = await connection.channel()
                    for queue in self._queues:
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
        if self._child is None or not self.running:
            return
        try:
            await self.ctl("stop", timeout=_STOP_TIMEOUT_SECONDS)
            await asyncio.wait_for(self._child.process.wait(), _STOP_TIMEOUT_SECONDS)
        except (RuntimeError, TimeoutError):
            await self.kill()
        await self._wait_gone()

    async def kill(self) -> None:
        """SIGKILL the whole process tree at once: the start script, beam.smp and its helpers."""
        if self._child is None or not self.running:
            return
        await procs.kill(self._child, _STOP_TIMEOUT_SECONDS)
        await self._wait_gone()

    async def freeze(self) -> None:
        """SIGSTOP the Erlang VM: its sockets stay open and nothing answers (a hung host)."""
        os.kill(self._beam_pid(), signal.SIGSTOP)

    async def thaw(self) -> None:
        """SIGCONT the Erlang VM after `freeze`."""
        os.kill(self._beam_pid(), signal.SIGCONT)

    def _beam_pid(self) -> int:
        pid = self.running_pid
        if pid is None:
            raise RuntimeError(f"{self.node}: no running Erlang VM listens on {self.amqp_port}")
        return pid

    async def ctl(self, *args: str, timeout: float = _CTL_TIMEOUT_SECONDS) -> str:
        """Run `rabbitmqctl -n <this node> ARGS`; its stdout, or RuntimeError with its stderr."""
        return await self._run(
            [str(self._ctl_script), "-n", self.node, "-q", *args],
            f"rabbitmqctl {' '.join(args)}",
            env=self._env,
            timeout=timeout,
        )

    async def run_ctl_script(self, argv: Sequence[str], stdin: bytes) -> str:
        """Run a script that calls `$RABBITMQCTL` (deploy/rabbitmq/users.sh) against this node,
        `stdin` on its standard input; its stdout, or RuntimeError with its stderr."""
        return await self._run(
            argv,
            " ".join(argv),
            env={**self._env, "RABBITMQCTL": f"{self._ctl_script} -n {self.node}"},
            stdin=stdin,
        )

    async def _run(
        self,
        argv: Sequence[str],
        what: str,
        *,
        env: dict[str, str],
        stdin: bytes | None = None,
        timeout: float = _CTL_TIMEOUT_SECONDS,
    ) -> str:
        """Run `argv` in this node's directory; its stdout, or RuntimeError naming `what`."""
        process = await asyncio.create_subprocess_exec(
            *argv,
            cwd=self.base,
            env=env,
            stdin=asyncio.subprocess.DEVNULL if stdin is None else asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            stdout, stderr = await asyncio.wait_for(process.communicate(stdin), timeout)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise RuntimeError(f"{what} timed out after {timeout}s") from None
        if process.returncode != 0:
            raise RuntimeError(
                f"{what} failed ({process.returncode}): "
                f"{stderr.decode(errors='replace').strip() or stdout.decode(errors='replace')}"
            )
        return stdout.decode()

    async def connections(self) -> list[dict[str, Any]]:
        """The client connections (of the whole cluster) as `rabbitmqctl list_connections`
        shows them: `name` (the client's connection_name), `ssl`, `auth_mechanism`, `user`,
        and `port`, the listener's, which says what node a connection is on."""
        listing = await self.ctl(
            "list_connections", "client_properties", "ssl", "auth_mechanism", "user", "port",
            "--formatter", "json",
        )  # fmt: skip
        rows: list[dict[str, Any]] = json.loads(listing or "[]")
        for row in rows:
            properties = {key: value for key, _type, value in row.pop("client_properties")}
            row["name"] = properties.get("connection_name", "")
        return rows

    async def close_all_connections(self) -> None:
        await self.ctl("close_all_connections", "fault injection by the test suite")

    async def set_memory_alarm(self, on: bool) -> None:
        """Raise the memory alarm (watermark 0 blocks every publisher) or clear it (0.4)."""
        await self.ctl("set_vm_memory_high_watermark", "0" if on else "0.4")

    async def limit_queue(self, policy: str, queue: str, max_length: int) -> None:
        """A policy that caps `queue` at `max_length` messages; a full queue nacks new ones."""
        await self.ctl(
            "set_policy", "-p", "/", "--apply-to", "queues", policy, f"^{re.escape(queue)}$",
            json.dumps({"max-length": max_length, "overflow": "reject-publish"}),
        )  # fmt: skip

    async def clear_queue_limit(self, policy: str, queue: str) -> None:
        """Drop the policy, and wait until `queue` has none."""
        await self.ctl("clear_policy", "-p", "/", policy)
        await self.wait_policy(queue, "")

    async def wait_policy(self, queue: str, policy: str, timeout: float = 15.0) -> None:
        """Poll (bounded) until `queue` shows `policy` as its effective policy ("" for none)."""
        deadline = time.monotonic() + timeout
        while True:
            listing = await self.ctl(
                "list_queues", "-p", "/", "name", "policy", "--no-table-headers"
            )
            rows = dict([*line.split("\t"), ""][:2] for line in listing.splitlines() if line)
            if rows.get(queue, "").strip() == policy:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{queue} did not get policy {policy!r}: {rows}")
            await asyncio.sleep(0.1)

    async def close(self) -> None:
        """Stop the node whatever state it is in; leave no process behind."""
        try:
            await self.stop()
        finally:
            await self.kill()

    def log_tail(self, lines: int = 40) -> str:
        texts = []
        boot_log = self._child.log_path if self._child else None
        for path in (boot_log, self.log_file):
            if path is not None and path.exists():
                texts.append(
                    f"--- {path}\n"
                    + "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
                )
        return "\n".join(texts)

    async def _wait_gone(self) -> None:
        """Wait (bounded) until the AMQP port is closed and epmd forgot the node's name."""
        deadline = time.monotonic() + _STOP_TIMEOUT_SECONDS
        short_name = self.node.partition("@")[0]
        while accepts(self.amqp_port) or short_name in await _epmd_names():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.node} still registered or listening after it stopped")
            await asyncio.sleep(0.05)


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
