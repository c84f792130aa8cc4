"""The layers of src/gateway and what each may import (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[2] / "src" / "gateway"

# Libraries that only some layers may use: grpc's server side and aiohttp are the transports'
# business; aio-pika and the AMQP libraries beneath it are the RabbitMQ broker's.
TRANSPORT_LIBRARIES = ("grpc", "grpc_health", "grpc_reflection", "grpc_status", "aiohttp")
AMQP_LIBRARIES = ("aio_pika", "aiormq", "pamqp")
# What of the gateway's own the core may not import: everything but the contracts, the errors,
# itself and the broker interface (gateway.broker, gateway.broker.base).
CORE_MAY_NOT_IMPORT = (
    "gateway.app",
    "gateway.transport",
    "gateway.config",
    "gateway.broker.rabbit",
    "gateway.broker.memory",
)


def module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(source: str, module: str) -> set[str]:
    """Every module `source` imports, at any depth (functions included), absolute."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the importing module's package
                base = module.split(".")[: -node.level]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            found.add(name)
            found.update(f"{name}.{alias.name}" for alias in node.names)
    return found


def within(name: str, *packages: str) -> bool:
    return any(name == package or name.startswith(package + ".") for package in packages)


def violations(module: str, imported: set[str]) -> list[str]:
    """Why `module` may not import some of `imported`, one line per broken rule."""
    found = []
    for name in sorted(imported):
        if within(module, "gateway.contracts") and within(
            name, "gateway.core", "gateway.transport", "gateway.app", "gateway.broker"
        ):
            found.append(f"{module} imports {name}: contracts import no other layer")
        if within(module, "gateway.core") and within(name, *CORE_MAY_NOT_IMPORT):
            found.append(
                f"{module} imports {name}: core imports contracts, errors and the broker "
                "interface only"
            )
        if not within(module, "gateway.transport") and within(name, *TRANSPORT_LIBRARIES):
            found.append(f"{module} imports {name}: only gateway.transport serves gRPC or HTTP")
        if module != "gateway.broker.rabbit" and within(name, *AMQP_LIBRARIES):
            found.append(f"{module} imports {name}: only gateway.broker.rabbit speaks AMQP")
    return found


def test_every_module_keeps_to_its_layer() -> None:
    """No module of src/gateway imports what its layer's rules forbid."""
    broken = []
    for path in sorted(SOURCE.rglob("*.py")):
        module = module_name(path)
        broken += violations(module, imports(path.read_text(encoding="utf-8"), module))

    assert broken == []


def test_every_module_belongs_to_a_layer() -> None:
    """Besides the modules every layer shares (errors, config, watched_files) and the entry
    points, every module sits in a layer's folder."""
    layers = ("contracts", "core", "broker", "transport", "app")
    top_level = ("__init__", "__main__", "errors", "config", "watched_files")
    loose = [
        module_name(path)
        for path in SOURCE.rglob("*.py")
        if path.parent != SOURCE or path.stem not in top_level
        if path.relative_to(SOURCE).parts[0] not in layers
    ]

    assert loose == []


@pytest.mark.parametrize(
    ("module", "source", "rule"),
    [
        ("gateway.contracts.routing", "from gateway.core.ingest import Ingestor", "contracts"),
        ("gateway.core.ingest", "from gateway.app.server import Gateway", "core imports"),
        ("gateway.core.ingest", "from gateway.broker.rabbit import RabbitBroker", "core imports"),
        ("gateway.core.ingest", "from gateway.config import Settings", "core imports"),
        ("gateway.core.methods", "import grpc", "only gateway.transport"),
        ("gateway.app.server", "from aiohttp import web", "only gateway.transport"),
        ("gateway.app.server", "def f():\n    import grpc.aio\n", "only gateway.transport"),
        ("gateway.core.ingest", "import aio_pika", "only gateway.broker.rabbit"),
        ("gateway.broker.memory", "from aiormq import spec", "only gateway.broker.rabbit"),
        ("gateway.contracts.schema", "from ..core import ingest", "contracts"),
    ],
)
def test_a_forbidden_import_is_caught(module: str, source: str, rule: str) -> None:
    """The checker itself: each kind of forbidden import is reported with its rule."""
    found = violations(module, imports(source, module))

    assert found
    assert rule in found[0]


def test_allowed_imports_pass() -> None:
    """What the layers may import is not reported."""
    allowed = {
        "gateway.core.ingest": "from gateway.broker import Broker, Envelope\n"
        "from gateway.contracts.routing import Route\nfrom gateway.errors import Code",
        "gateway.transport.grpc_service": "import grpc\nfrom gateway.core.methods import Methods",
        "gateway.broker.rabbit": "import aio_pika\nimport aiormq",
        "gateway.app.server": "from gateway.transport.grpc_server import GrpcServer",
    }
    for module, source in allowed.items():
        assert violations(module, imports(source, module)) == [], module
