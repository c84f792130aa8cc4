"""The settings the manifests give the gateway are settings it reads.

The Kubernetes ConfigMap, the Deployment's environment and the compose environment must load
with the gateway's own settings loader, so that a misspelt key fails here and not at a pod's
start-up.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from gateway.config import Settings, load_settings
from tests.deploy.dockerfile import ROOT
from tests.deploy.manifests import compose, gateway_container, k8s_settings

# What the Deployment's environment holds at run time (from Secrets and the resource limit).
K8S_ENV_VALUES = {
    "TASK_GATEWAY__BROKER__ADDRESS": "amqps://task-gateway:secret@rabbitmq-0:5671/",
    "TASK_GATEWAY__WORKERS": "2",
}


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


def test_the_kubernetes_settings_load(tmp_path: Path) -> None:
    """The ConfigMap's TOML with the Deployment's environment loads."""
    variables = {e["name"] for e in gateway_container()["env"]}
    environ = {name: K8S_ENV_VALUES[name] for name in variables}

    settings = _load(tmp_path, _as_toml(k8s_settings()), environ)

    assert variables == set(K8S_ENV_VALUES)
    assert settings.run_mode == "production"
    assert settings.workers == 2
    assert settings.broker_urls == ("amqps://task-gateway:secret@rabbitmq-0:5671/",)


def test_the_compose_environment_loads(tmp_path: Path) -> None:
    """The compose gateway's environment and the image's gateway.toml load."""
    environment = compose()["services"]["gateway"]["environment"]
    environ = {k: str(v) for k, v in environment.items()}

    settings = load_settings(ROOT / "deploy" / "gateway.toml", environ)

    assert settings.broker_urls == ("amqp://guest:guest@rabbitmq:5672/",)
    assert settings.workers == 1


def test_the_rendering_round_trips_the_kubernetes_settings() -> None:
    """_as_toml, which the tests above rely on, renders the settings file faithfully."""
    assert tomllib.loads(_as_toml(k8s_settings())) == k8s_settings()
