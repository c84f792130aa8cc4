"""Create build/bench-venv: the venv the naive baselines run in (make bench calls this).

    .venv/bin/python -m bench.setup_baselines [VENV]

The baselines need fastapi and uvicorn, which must not go into the project's .venv. The
libraries they share with the gateway (grpcio, protobuf, aio-pika, aiormq, pamqp, uvloop) are
pinned to the versions installed in the venv running this script, so a ratio compares the code,
not two library versions. Does nothing when ../shared/baselines is absent (the bench then skips
the baselines) or when the venv is already up to date.
"""

from __future__ import annotations

import subprocess
import sys
import venv
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ("grpcio", "protobuf", "aio-pika", "aiormq", "pamqp", "uvloop")
REQUIREMENTS = ROOT / "bench" / "requirements-baselines.txt"


def git(*args: str) -> str:
    """What `git ARGS` prints in this checkout (raises when git is missing or fails)."""
    return subprocess.run(
        ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True, timeout=10
    ).stdout.strip()


def default_baselines() -> Path:
    """$(git rev-parse --show-toplevel)/../shared/baselines."""
    try:
        top = git("rev-parse", "--show-toplevel")
    except (subprocess.SubprocessError, OSError):
        top = str(ROOT)
    return (Path(top) / ".." / "shared" / "baselines").resolve()


def pins() -> list[str]:
    found = []
    for name in SHARED:
        try:
            found.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            found.append(name)
    return found


def main(argv: list[str]) -> int:
    target = Path(argv[0]) if argv else ROOT / "build" / "bench-venv"
    baselines = default_baselines()
    if not (baselines / "grpc_baseline.py").exists():
        print(f"bench: no baselines at {baselines}; not creating {target}")
        return 0
    wanted = "\n".join([*pins(), REQUIREMENTS.read_text()])
    stamp = target / ".installed"
    if stamp.exists() and stamp.read_text() == wanted:
        return 0
    print(f"bench: creating {target} for the baselines (fastapi, uvicorn; {', '.join(pins())})")
    if not (target / "bin" / "python").exists():
        venv.EnvBuilder(with_pip=True, clear=True).create(target)
    python = str(target / "bin" / "python")
    subprocess.run(
        [
            python,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
            str(REQUIREMENTS),
            *pins(),
        ],
        check=True,
        timeout=900,
    )
    stamp.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
