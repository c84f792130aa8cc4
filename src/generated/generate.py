"""Generate the `taskgateway_api` package from `proto/`: `python src/generated/generate.py OUT`.

protoc writes modules named after the proto packages (`images.v1.images_pb2`); clients would
then install top-level packages called `images` and `videos`, which any other project may
also own. So, as temporalio's `gen_protos.py` does, the output is moved under one namespaced
package and every import of a generated module is rewritten to it. The proto packages, and so
the gRPC service names on the wire (`images.v1.ImagesService`), do not change.

Besides the modules and their `.pyi` stubs, a descriptor set with source info is written
(`taskgateway_api/contracts.binpb`): protoc drops comments from the modules, and the gateway
turns them into OpenAPI descriptions and JSON Schema titles.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import google.api
from grpc_tools import protoc

PACKAGE = "taskgateway_api"
ROOT = Path(__file__).resolve().parents[2]
PROTO = ROOT / "proto"
# The proto packages' top-level names: what protoc makes top-level Python packages of.
PROTO_ROOTS = ("images", "videos", "taskgateway")

_PACKAGE_DOC = "The Task Gateway's contracts, generated from proto/ by src/generated/generate.py."
_IMPORT = re.compile(rf"^(from|import) ({'|'.join(PROTO_ROOTS)})(\.)", re.MULTILINE)
# The module name protoc's builder gives the generated classes (their __module__).
_BUILDER_MODULE = re.compile(r"(_builder\.BuildTopDescriptorsAndMessages\(DESCRIPTOR, ')")


def googleapis_root() -> Path:
    """Where googleapis-common-protos keeps google/api/*.proto (imported by the contracts)."""
    return Path(next(iter(google.api.__path__))).parents[1]


def generate(out: Path) -> None:
    """Write the package to `out/taskgateway_api`, replacing what is there."""
    protos = sorted(str(path.relative_to(PROTO)) for path in PROTO.rglob("*.proto"))
    with tempfile.TemporaryDirectory() as scratch:
        raw = Path(scratch)
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO}",
            f"-I{googleapis_root()}",
            f"-I{Path(protoc.__file__).parent / '_proto'}",
            f"--python_out={raw}",
            f"--pyi_out={raw}",
            f"--grpc_python_out={raw}",
            "--include_source_info",
            f"--descriptor_set_out={raw / 'contracts.binpb'}",
            *protos,
        ]
        # protoc resolves the files against -I, so it runs from proto/.
        cwd = os.getcwd()
        os.chdir(PROTO)
        try:
            if protoc.main(args) != 0:
                raise SystemExit("protoc failed")
        finally:
            os.chdir(cwd)
        target = out / PACKAGE
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        for path in sorted(raw.rglob("*")):
            if path.is_dir():
                continue
            destination = target / path.relative_to(raw)
            destination.parent.mkdir(parents=True, exist_ok=True)
            if path.suffix in (".py", ".pyi"):
                destination.write_text(_rewrite(path.read_text()))
            else:
                shutil.copyfile(path, destination)
        for directory in [target, *(p for p in target.rglob("*") if p.is_dir())]:
            (directory / "__init__.py").touch()
        (target / "__init__.py").write_text(f'"""{_PACKAGE_DOC}"""\n')
        (target / "py.typed").touch()


def _rewrite(source: str) -> str:
    source = _IMPORT.sub(rf"\1 {PACKAGE}.\2\3", source)
    return _BUILDER_MODULE.sub(rf"\1{PACKAGE}.", source)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(f"usage: {sys.argv[0]} OUT_DIR")
    generate(Path(sys.argv[1]))
