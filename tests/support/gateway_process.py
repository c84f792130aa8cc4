"""`python -m gateway` in a process of its own, as an operator runs it.

`start_gateway_process` runs it with its output piped, for a test that reads what it logs as
it runs or sees how it exits; `GatewayProcess` runs it as the soak, the bench and the tests that
need a running gateway do: on free loopback ports, in a session of its own, its output in a log
file, ready once /readyz says so.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from tests.support import ROOT, procs
from tests.support.ports import free_port

__all__ = [
    "OWN_CONNECTION",
    "Addresses",
    "GatewayProcess",
    "clean_environ",
    "read_until",
    "start_gateway_process",
]

# Options of a grpc channel that opens a connection of its own. Channels to one address
# otherwise share one connection, so that with several workers they all reach the same one.
OWN_CONNECTION = (("grpc.use_local_subchannel_pool", 1),)


def clean_environ(extra: Mapping[str, str]) -> dict[str, str]:
    """Our environment without the TASK_GATEWAY__* variables a caller exported, plus `extra`."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("TASK_GATEWAY__")}
    return inherited | dict(extra)


@dataclass(frozen=True)
class Addresses:
    """Where a gateway listens: free loopback ports for gRPC and HTTP."""

    grpc_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)

    @property
    def grpc(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    def settings(self) -> dict[str, str]:
        return {
            "TASK_GATEWAY__GRPC__ADDRESS": self.grpc,
            "TASK_GATEWAY__SERVER__ADDRESS": self.http,
        }


async def start_gateway_process(env: dict[str, str], *args: str) -> asyncio.subprocess.Process:
    """`python -m gateway ARGS` with `env` as its settings, stdout and stderr piped together."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        *args,
        cwd=ROOT,
        env=clean_environ(env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )


async def read_until(process: asyncio.subprocess.Process, text: str) -> str:
    """What the process printed up to the first line containing `text` (within 20 s)."""
    assert process.stdout is not None
    seen = []
    async with asyncio.timeout(20):
        while line := (await process.stdout.readline()).decode():
            seen.append(line)
            if text in line:
                return "".join(seen)
    raise AssertionError(f"the gateway exited before logging {text!r}:\n{''.join(seen)}")


@dataclass
class GatewayProcess:
    """`python -m gateway ARGS` publishing to `broker_url`, its output in log_dir/name.log.

    An empty `broker_url` is the in-memory broker. JSON logs at level warning: at info the
    gateway logs every request, which costs throughput and fills the log; `settings` adds or
    overrides TASK_GATEWAY__* variables.
    """

    broker_url: str
    log_dir: Path
    name: str = "gateway"
    python: str = sys.executable
    args: Sequence[str] = ()
    settings: Mapping[str, str] = field(default_factory=dict)
    addresses: Addresses = field(default_factory=Addresses)
    child: procs.Child | None = None

    @property
    def argv(self) -> list[str]:
        return [self.python, "-m", "gateway", *self.args]

    @property
    def http_base(self) -> str:
        return f"http://{self.addresses.http}"

    @property
    def alive(self) -> bool:
        return self.child is not None and self.child.alive()

    async def start(self, timeout: float = 30.0) -> float:
        """Start it and wait until /readyz answers 200; the seconds that took."""
        environ = clean_environ(
            {
                # JSON lines, as in production (config/production.toml is a locked-down
                # deployment's: TLS and authentication, which these runs do not set up).
                "TASK_GATEWAY__LOG__FORMAT": "json",
                "TASK_GATEWAY__BROKER__ADDRESS": self.broker_url,
                **self.addresses.settings(),
                "TASK_GATEWAY__LOG__LEVEL": "warning",  # see the class docstring
                **self.settings,
            }
        )
        self.child = await procs.spawn(
            self.name, self.argv, log_dir=self.log_dir, env=environ, cwd=ROOT
        )
        return await procs.wait_ready(self.child, self._ready, self.name, timeout)

    async def _ready(self) -> bool:
        """/readyz is 200: gRPC and HTTP listen, the broker is connected, the exchanges exist."""
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session,
                session.get(f"{self.http_base}/readyz") as response,
            ):
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    def pids(self) -> list[int]:
        return procs.process_tree(self.child.pid) if self.child else []

    async def stop(self, grace: float = 5.0) -> int | None:
        """SIGTERM (what is in flight settles), SIGKILL after `grace`; the exit status."""
        return await procs.stop(self.child, grace) if self.child else None

    def log_tail(self, lines: int = 30) -> str:
        return self.child.tail(lines) if self.child else ""

    def output(self) -> str:
        """All it wrote to stdout and stderr so far (the whole log file)."""
        return self.child.log_path.read_text(errors="replace") if self.child else ""
