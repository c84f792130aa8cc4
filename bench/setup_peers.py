"""Build the peer gateways of ../shared/baselines/peers for the bench (bench/run.py calls this).

    .venv/bin/python -m bench.setup_peers [--baselines DIR] [--out build/peers]

The peers (Go: grpc-go + amqp091-go from Debian packages; Node: grpc-js + amqplib from npm) are
built with their own `build.sh`, from a copy of their folder under `--out`, so that nothing is
written beside the shared sources (read-only): the Go binary goes to `OUT/build/go/bin`
(PEERS_BUILD), the Node modules to `OUT/src/node/node_modules`. Each build that cannot be done
here (no Go toolchain and no apt-get as root, npm failing, no Node 20) is reported with why, and
the bench skips that peer's rows. Idempotent: a build that is up to date takes a few seconds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD_TIMEOUT = 900.0  # a cold Go build apt-installs a toolchain and compiles grpc-go
PEERS = ("go", "node")


@dataclass(frozen=True)
class Peer:
    """A built peer (`argv` starts it, from `cwd`) or why it cannot run (`skip`)."""

    name: str
    argv: tuple[str, ...] = ()
    cwd: str = ""
    skip: str = ""


def _copy_sources(source: Path, dest: Path) -> None:
    """The peers' sources under dest, refreshed; Node's installed modules are kept."""
    ignore = shutil.ignore_patterns("node_modules", "build", "__pycache__")
    for entry in source.iterdir():
        target = dest / entry.name
        if entry.is_dir():
            shutil.copytree(entry, target, ignore=ignore, dirs_exist_ok=True)
        else:
            shutil.copy2(entry, target)
    # The copies must be writable (the shared tree is not) and the scripts executable.
    for path in dest.rglob("*"):
        if "node_modules" not in path.parts:
            path.chmod(path.stat().st_mode | 0o200)


def _run(argv: list[str], cwd: Path, log: Path, env: dict[str, str]) -> str | None:
    """Run a build step, its output appended to log; None when it succeeded, else why not."""
    with log.open("ab") as out:
        out.write(f"$ {' '.join(argv)}  (in {cwd})\n".encode())
        out.flush()
        try:
            done = subprocess.run(
                argv, cwd=cwd, env=env, stdout=out, stderr=out, timeout=BUILD_TIMEOUT, check=False
            )
        except subprocess.TimeoutExpired:
            return f"{argv[0]} took more than {BUILD_TIMEOUT:.0f} s (see {log})"
        except OSError as exc:
            return f"{argv[0]}: {exc}"
    if done.returncode != 0:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
        # The first lines that say what went wrong (npm and apt end with generic advice).
        said = [ln for ln in lines if re.search(r"error|fatal|unable|cannot|not found", ln, re.I)]
        excerpt = " / ".join(said[:2] or lines[-3:])
        return f"{' '.join(argv)} exited {done.returncode}: {excerpt} (see {log})"
    return None


def build_go(src: Path, out: Path, log: Path) -> Peer:
    """peers/go/build.sh: Go 1.19 and its libraries from Debian packages, offline."""
    if shutil.which("go") is None and (os.geteuid() != 0 or shutil.which("apt-get") is None):
        return Peer(
            "go",
            skip="no Go toolchain, and build.sh can apt-get install golang-go only as root",
        )
    env = os.environ | {"PEERS_BUILD": str(out / "build"), "DEBIAN_FRONTEND": "noninteractive"}
    why = _run(["bash", str(src / "go" / "build.sh")], src / "go", log, env)
    binary = out / "build" / "go" / "bin" / "go-peer"
    if why is None and not binary.exists():
        why = f"build.sh printed no error but {binary} is missing (see {log})"
    return Peer("go", skip=f"Go build failed: {why}") if why else Peer("go", (str(binary),))


def build_node(src: Path, log: Path) -> Peer:
    """peers/node/build.sh: npm ci from package-lock.json, skipped when already installed."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        return Peer("node", skip="no Node.js/npm on PATH (apt-get install nodejs npm)")
    here = src / "node"
    inputs = [here / "package.json", here / "package-lock.json"]
    stamp = here / "node_modules" / ".bench-installed"
    wanted = hashlib.sha256(b"".join(f.read_bytes() for f in inputs if f.exists())).hexdigest()
    if not (stamp.exists() and stamp.read_text() == wanted):
        why = _run(["bash", str(here / "build.sh")], here, log, dict(os.environ))
        if why:
            return Peer("node", skip=f"Node build failed: {why}")
        stamp.write_text(wanted)
    return Peer("node", (node, str(here / "server.js")), cwd=str(here))


def setup(
    baselines: Path, out: Path, log_dir: Path, wanted: tuple[str, ...] = PEERS
) -> dict[str, Peer]:
    """Build each wanted peer; {name: Peer}, with a skip reason for those that cannot run."""
    source = baselines / "peers"
    if not (source / "README.md").exists():
        return {name: Peer(name, skip=f"no peers at {source}") for name in wanted}
    src = out / "src"
    src.mkdir(parents=True, exist_ok=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    _copy_sources(source, src)
    peers: dict[str, Peer] = {}
    for name in wanted:
        log = log_dir / f"peer-{name}-build.log"
        log.unlink(missing_ok=True)
        peers[name] = build_go(src, out, log) if name == "go" else build_node(src, log)
    (out / "status.json").write_text(
        json.dumps({k: asdict(v) for k, v in peers.items()}, indent=2) + "\n"
    )
    return peers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.setup_peers", description=__doc__)
    parser.add_argument("--baselines", type=Path, help="default: ../shared/baselines")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "peers")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from bench.setup_baselines import default_baselines

    peers = setup(args.baselines or default_baselines(), args.out, args.out / "logs")
    for peer in peers.values():
        what = f"skipped: {peer.skip}" if peer.skip else " ".join(peer.argv)
        print(f"peer {peer.name}: {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
