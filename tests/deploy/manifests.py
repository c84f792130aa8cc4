"""The deployment manifests as data: deploy/k8s, deploy/compose.yaml and their settings."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.dockerfile import ROOT

K8S = ROOT / "deploy" / "k8s"
COMPOSE = ROOT / "deploy" / "compose.yaml"


def k8s_objects() -> dict[tuple[str, str], dict[str, Any]]:
    """Every object of the kustomization's resources, by (kind, name)."""
    objects = {}
    for resource in kustomization()["resources"]:
        for document in yaml.safe_load_all((K8S / resource).read_text()):
            objects[document["kind"], document["metadata"]["name"]] = document
    return objects


def kustomization() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return loaded


def k8s_settings_file() -> Path:
    """The TOML of the generated ConfigMap task-gateway-config."""
    (generator,) = kustomization()["configMapGenerator"]
    (file,) = generator["files"]
    return K8S / file


def k8s_settings() -> dict[str, Any]:
    return tomllib.loads(k8s_settings_file().read_text())


def gateway_container() -> dict[str, Any]:
    pod = k8s_objects()["Deployment", "task-gateway"]["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == "gateway"]
    return dict(container)


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded
