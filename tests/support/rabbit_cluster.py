"""A RabbitMQ cluster of private nodes on this machine, with the production topology.

Three `RabbitNode`s of the installed rabbitmq-server, each with its own node name, AMQP and
Erlang distribution ports and data directories, sharing an Erlang cookie. The nodes boot
alone; all but the first then `stop_app`, `reset`, `join_cluster` the first and `start_app`.
Only then is `deploy/rabbitmq/definitions.production.json` imported, so that each quorum
queue gets a member on every node, and `deploy/rabbitmq/users.sh gateway` creates the
gateway's least-privilege user, as docs/deploying.md tells an operator to.

    python -m tests.support.rabbit_cluster [DIR]     # `make cluster`: one by hand, until Ctrl-C

The nodes run with `CLUSTER_CONFIG`: a 10 s Erlang tick time and `pause_minority`, so that a
node that hangs is declared down in seconds rather than a minute (docs/deploying.md, "What a
client sees during a node loss").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from tests.support import ROOT
from tests.support.rabbit_node import RabbitNode

__all__ = ["PRODUCTION_DEFINITIONS", "RabbitCluster"]

PRODUCTION_DEFINITIONS = ROOT / "deploy" / "rabbitmq" / "definitions.production.json"
USERS_SCRIPT = ROOT / "deploy" / "rabbitmq" / "users.sh"
GATEWAY_USER = "task-gateway"
# How the nodes notice a peer that stopped answering without closing its connections (a
# frozen or cut-off host). Erlang's default tick time, 60 s, lets a quorum queue whose leader
# is on such a node refuse or hold publishes for a minute; 10 s is still far above what a
# busy node on a LAN is late by. A node that finds itself cut off from the majority pauses
# until it can reach it again, then rejoins: RabbitMQ's advice for three nodes or more.
CLUSTER_CONFIG = ("net_ticktime = 10", "cluster_partition_handling = pause_minority")


class RabbitCluster:
    """`size` private nodes under `base`, clustered, with the production topology and users."""

    def __init__(self, base: Path, size: int = 3) -> None:
        cookie = secrets.token_hex(20).upper()
        password = secrets.token_urlsafe(16)
        self.nodes = [
            RabbitNode(
                base / f"node{index}", None, cookie=cookie, password=password, config=CLUSTER_CONFIG
            )
            for index in range(1, size + 1)
        ]
        self._gateway_password = secrets.token_urlsafe(16)

    @property
    def gateway_urls(self) -> list[str]:
        """One URL per node, in node order, for the gateway's least-privilege user."""
        return [
            f"amqp://{GATEWAY_USER}:{self._gateway_password}@127.0.0.1:{node.amqp_port}/"
            for node in self.nodes
        ]

    @property
    def boot_seconds(self) -> list[float]:
        return [seconds for node in self.nodes for seconds in node.boot_seconds]

    def running(self) -> RabbitNode:
        """A node that is up, for the test's own connections (administrator) and rabbitmqctl."""
        for node in self.nodes:
            if node.running:
                return node
        raise RuntimeError("no node of the cluster is running")

    def node_on(self, port: int) -> RabbitNode:
        (node,) = [node for node in self.nodes if node.amqp_port == port]
        return node

    async def start(self) -> None:
        """Boot the nodes, cluster them, import the production topology, create the users."""
        await asyncio.gather(*(node.start() for node in self.nodes))
        first, *others = self.nodes
        for node in others:
            for command in (
                ("stop_app",),
                ("reset",),
                ("join_cluster", first.node),
                ("start_app",),
            ):
                await node.ctl(*command)
            await node.wait_ready()
        status = json.loads(await first.ctl("cluster_status", "--formatter", "json"))
        if sorted(status["running_nodes"]) != sorted(node.node for node in self.nodes):
            raise RuntimeError(f"the cluster did not form: {status['running_nodes']}")
        await first.ctl("import_definitions", str(PRODUCTION_DEFINITIONS))
        await first.run_ctl_script(
            [str(USERS_SCRIPT), "gateway", GATEWAY_USER], self._gateway_password.encode()
        )
        await self.wait_replicated()

    async def wait_replicated(self, timeout: float = 60.0) -> None:
        """Until every quorum queue has a member online on every node (bounded)."""
        node = self.running()
        deadline = time.monotonic() + timeout
        while True:
            listing = await node.ctl("list_queues", "name", "online", "--formatter", "json")
            queues = json.loads(listing or "[]")
            if queues and all(len(q["online"]) == len(self.nodes) for q in queues):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"quorum queues not on every node: {queues}")
            await asyncio.sleep(0.2)

    async def connections_by_node(self, prefix: str) -> Counter[RabbitNode]:
        """How many client connections named `prefix…` each node holds (every node up)."""
        rows = await self.running().connections()
        return Counter(self.node_on(row["port"]) for row in rows if row["name"].startswith(prefix))

    async def close(self) -> None:
        """Stop every node, whatever state it is in (a frozen one is thawed first)."""
        for node in self.nodes:
            with contextlib.suppress(RuntimeError, ProcessLookupError):
                await node.thaw()
        results = await asyncio.gather(
            *(node.close() for node in self.nodes), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]


async def _run_by_hand(base: Path) -> None:
    shutil.rmtree(base, ignore_errors=True)
    cluster = RabbitCluster(base)
    try:
        started = time.monotonic()
        await cluster.start()
        took = time.monotonic() - started
        print(f"a {len(cluster.nodes)}-node RabbitMQ cluster is up ({took:.0f} s):")
        for node in cluster.nodes:
            print(f"  {node.node}: AMQP 127.0.0.1:{node.amqp_port}, pid {node.running_pid}")
            print(f"    administrator: {node.url}")
            print(f"    {node.ctl_line} stop_app   # or start_app, cluster_status, ...")
        print("\nRun a gateway on it:\n")
        print(f"  TASK_GATEWAY__BROKER__ADDRESS={','.join(cluster.gateway_urls)} make run\n")
        print("Ctrl-C (or SIGTERM) stops the cluster.", flush=True)
        stop = asyncio.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(signum, stop.set)
        await stop.wait()
    finally:
        await cluster.close()


def main(argv: Sequence[str]) -> int:
    base = (Path(argv[0]) if argv else ROOT / "build" / "cluster").resolve()
    asyncio.run(_run_by_hand(base))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
