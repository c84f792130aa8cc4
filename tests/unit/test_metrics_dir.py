"""The multiprocess metrics directory: each process writes its own files, also after a fork.

prometheus_client is loaded once per process and `prepare` must run before it, so each case
runs in a fresh interpreter.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

# Prepare the directory, count once, fork, count in the child (and write nothing more in the
# parent), then report what the directory holds and what a scrape adds up to.
SCRIPT = """
import json, os, sys
from gateway.app import metrics_dir

directory = metrics_dir.prepare()
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.multiprocess import MultiProcessCollector

calls = Counter("calls", "calls", ["worker"])
calls.labels("first").inc()
child = os.fork()
if child == 0:
    calls.labels("forked").inc(2)
    calls.labels("first").inc(4)
    os._exit(0)
os.waitpid(child, 0)
registry = CollectorRegistry()
MultiProcessCollector(registry, str(directory))
print(json.dumps({
    "files": sorted(p.name for p in directory.iterdir()),
    "parent": os.getpid(),
    "child": child,
    "first": registry.get_sample_value("calls_total", {"worker": "first"}),
    "forked": registry.get_sample_value("calls_total", {"worker": "forked"}),
}))
"""


def test_a_forked_worker_counts_in_files_of_its_own(tmp_path: Path) -> None:
    """The child of a fork writes to files named by its own pid, and a scrape sums both."""
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)

    assert seen["files"] == sorted([f"counter_{seen['parent']}.db", f"counter_{seen['child']}.db"])
    assert (seen["first"], seen["forked"]) == (5.0, 2.0)
