"""The settings the manifests give the gateway are settings it reads (or is about to).

The Kubernetes ConfigMap, the Deployment's environment and the compose environment use some
settings that today's gateway does not read yet (PENDING, listed in docs/deploying.md). Every
other key must load with today's settings loader, so a misspelt key fails here and not at a
pod's start-up; and each pending key must still be unknown, so that this list and the docs
are brought up to date when it lands.
"""

from __future__ import annotations

import copy
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from gateway.config import ENV_PREFIX, Settings, load_settings
from gateway.errors import ConfigError
from tests.deploy.dockerfile import ROOT
from tests.deploy.manifests import compose, gateway_container, k8s_settings

# Settings the manifests use that the gateway does not read yet, as dotted keys.
PENDING = ("admin", "auth", "grpc.tls", "server.tls", "broker.tls")

# What the Deployment's environment holds at run time (from Secrets and the resource limit).
K8S_ENV_VALUES = {
    "TASK_GATEWAY__BROKER__ADDRESS": "amqps://task-gateway:secret@rabbitmq-0:5671/",
    "TASK_GATEWAY__WORKERS": "2",
}


def _without_pending(settings: dict[str, Any]) -> dict[str, Any]:
    kept = copy.deepcopy(settings)
    for key in PENDING:
        *sections, last = key.split(".")
        table = kept
        for section in sections:
            table = table.get(section, {})
        table.pop(last, None)
    return kept


def _env_key(variable: str) -> str:
    return ".".join(part.lower() for part in variable.removeprefix(ENV_PREFIX).split("__"))


def _pending(variable: str) -> bool:
    key = _env_key(variable)
    return any(key == p or key.startswith(p + ".") for p in PENDING)


def _load(tmp_path: Path, toml: str, environ: dict[str, str]) -> Settings:
    path = tmp_path / "gateway.toml"
    path.write_text(toml)
    return load_settings(path, environ)


def _as_toml(settings: dict[str, Any]) -> str:
    """TOML for nested tables of strings, numbers and booleans (all a settings file holds)."""
    lines: list[str] = []

    def table(prefix: str, values: dict[str, Any]) -> None:
        scalars = {k: v for k, v in values.items() if not isinstance(v, dict)}
        if prefix and scalars:
            lines.append(f"[{prefix}]")
        for key, value in scalars.items():
            lines.append(f"{key} = {json.dumps(value)}")  # JSON scalars are TOML scalars
        for key, value in values.items():
            if isinstance(value, dict):
                table(f"{prefix}.{key}" if prefix else key, value)

    table("", settings)
    return "\n".join(lines) + "\n"


def test_the_kubernetes_settings_load_but_for_the_pending_ones(tmp_path: Path) -> None:
    """The ConfigMap's TOML with the Deployment's environment loads, pending sections aside."""
    variables = {e["name"] for e in gateway_container()["env"]}
    environ = {name: K8S_ENV_VALUES[name] for name in variables if not _pending(name)}

    settings = _load(tmp_path, _as_toml(_without_pending(k8s_settings())), environ)

    assert variables == set(K8S_ENV_VALUES)
    assert settings.run_mode == "production"
    assert settings.workers == 2
    assert settings.broker_urls == ("amqps://task-gateway:secret@rabbitmq-0:5671/",)


def test_the_compose_environment_loads_but_for_the_pending_settings(tmp_path: Path) -> None:
    """The compose gateway's environment and the image's gateway.toml load, pending ones aside."""
    environment = compose()["services"]["gateway"]["environment"]
    environ = {k: str(v) for k, v in environment.items() if not _pending(k)}

    settings = load_settings(ROOT / "deploy" / "gateway.toml", environ)

    assert settings.broker_urls == ("amqp://guest:guest@rabbitmq:5672/",)
    assert settings.workers == 1


@pytest.mark.parametrize("key", PENDING)
def test_each_pending_setting_is_still_unknown_to_the_gateway(key: str, tmp_path: Path) -> None:
    """A pending key is refused today; once it loads, drop it from PENDING and the docs' list."""
    *sections, last = key.split(".")
    toml = f'[{".".join([*sections, last])}]\naddress = "0.0.0.0:9090"\n'

    with pytest.raises(ConfigError, match=f"unknown setting {re.escape(key)}"):
        _load(tmp_path, toml, {})


def test_the_rendering_round_trips_the_kubernetes_settings() -> None:
    """_as_toml, which the tests above rely on, renders the settings file faithfully."""
    assert tomllib.loads(_as_toml(k8s_settings())) == k8s_settings()
