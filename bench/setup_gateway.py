"""Create build/gateway-venv: the gateway as it is deployed, for the bench to measure.

    .venv/bin/python -m bench.setup_gateway [VENV]

`pip install ./src/generated .` of this checkout (the contracts and the server), without the
dev extra: the project's .venv also holds the test and lint tools, and some change what the
gateway loads (structlog renders tracebacks with rich when rich is installed, and schemathesis
installs it: 15 MB more per process). The
libraries the gateway shares with the baselines are pinned to the versions in the venv running
this script, as bench/setup_baselines.py pins them, so a ratio compares code, not versions.
The gateway itself is reinstalled on every call (a few seconds): the bench measures the code
as it is now.
"""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> int:
    target = Path(argv[0]) if argv else ROOT / "build" / "gateway-venv"
    sys.path.insert(0, str(ROOT))
    from bench.setup_baselines import pins

    python = target / "bin" / "python"
    if not python.exists():
        print(f"bench: creating {target} (the gateway without the dev extra)")
        venv.EnvBuilder(with_pip=True, clear=True).create(target)
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    # Dependencies (skipped when satisfied), then this checkout's code afresh.
    # The server and its contracts, a distribution of their own (src/generated).
    checkout = [str(ROOT / "src" / "generated"), str(ROOT)]
    subprocess.run([*pip, *checkout, *pins()], check=True, timeout=900)
    subprocess.run([*pip, "--no-deps", "--force-reinstall", *checkout], check=True, timeout=900)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
