"""The Kubernetes manifests agree with each other, with the image and with the gateway.

`kubernetes-validate --strict` (make deploy-check) checks each object against the API's
schemas; these tests check what no schema knows: that the Service, the PDB and the HPA find
the Deployment's pods, that the grace period outlasts the gateway's own shutdown grace, that
the probes and the scrape annotations name the admin port, that the pod runs as the image's
user, and that every Secret it needs is described.
"""

from __future__ import annotations

from typing import Any

import yaml

from gateway.config import GrpcSettings
from tests.deploy.dockerfile import runtime_stage
from tests.deploy.manifests import K8S, gateway_container, k8s_objects, k8s_settings, kustomization

OBJECTS = k8s_objects()
DEPLOYMENT = OBJECTS["Deployment", "task-gateway"]
POD = DEPLOYMENT["spec"]["template"]
CONTAINER = gateway_container()
PORTS = {port["name"]: port["containerPort"] for port in CONTAINER["ports"]}


def _selects_the_pods(selector: dict[str, str]) -> bool:
    return bool(selector) and selector.items() <= POD["metadata"]["labels"].items()


def test_the_kustomization_lists_every_manifest_but_the_secrets_example() -> None:
    """Every manifest of deploy/k8s is applied by `kubectl apply -k`, the example Secrets not."""
    manifests = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}

    assert set(kustomization()["resources"]) == manifests - {"secrets.example.yaml"}


def test_the_services_budget_and_autoscaler_find_the_deployments_pods() -> None:
    """Both Services and the PodDisruptionBudget select the pods; the HPA targets the Deployment."""
    hpa = OBJECTS["HorizontalPodAutoscaler", "task-gateway"]["spec"]

    for kind, name in [
        ("Service", "task-gateway"),
        ("Service", "task-gateway-headless"),
        ("PodDisruptionBudget", "task-gateway"),
    ]:
        spec = OBJECTS[kind, name]["spec"]
        selector = spec["selector"].get("matchLabels", spec["selector"])
        assert _selects_the_pods(selector), (kind, name)
    assert _selects_the_pods(DEPLOYMENT["spec"]["selector"]["matchLabels"])
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "task-gateway",
    }


def test_the_autoscaler_owns_the_replica_count_and_keeps_two() -> None:
    """At least two replicas, counted by the HPA alone (no `replicas` in the Deployment)."""
    hpa = OBJECTS["HorizontalPodAutoscaler", "task-gateway"]["spec"]

    assert hpa["minReplicas"] >= 2
    assert "replicas" not in DEPLOYMENT["spec"]
    assert OBJECTS["PodDisruptionBudget", "task-gateway"]["spec"]["maxUnavailable"] < 2


def test_the_grace_period_outlasts_the_pause_and_the_gateways_shutdown_grace() -> None:
    """SIGKILL comes after the preStop pause plus grpc.shutdown_grace_seconds and the answers."""
    pause = CONTAINER["lifecycle"]["preStop"]["exec"]["command"]
    grace = k8s_settings()["grpc"].get(
        "shutdown_grace_seconds", GrpcSettings.shutdown_grace_seconds
    )

    assert pause[0] == "sleep"
    assert int(pause[1]) > 0
    # 1 s: what the gateway leaves the handlers to write their answers after the grace.
    assert POD["spec"]["terminationGracePeriodSeconds"] > int(pause[1]) + grace + 1


def test_probes_and_scraping_use_the_admin_listener() -> None:
    """Probes, the scrape annotations and the admin address all name port 9090."""
    admin_port = int(k8s_settings()["admin"]["address"].rpartition(":")[2])
    probes = {kind: CONTAINER[kind]["httpGet"] for kind in ("livenessProbe", "readinessProbe")}

    assert PORTS["admin"] == admin_port == 9090
    assert probes["livenessProbe"] == {"path": "/healthz", "port": "admin"}
    assert probes["readinessProbe"] == {"path": "/readyz", "port": "admin"}
    assert POD["metadata"]["annotations"]["prometheus.io/port"] == str(admin_port)
    assert POD["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"


def test_the_pod_runs_as_the_images_user_with_a_read_only_root() -> None:
    """runAsNonRoot with the image's uid, no writable root but /tmp, no capabilities."""
    uid, _, gid = runtime_stage().user.partition(":")
    security = POD["spec"]["securityContext"]
    container = CONTAINER["securityContext"]
    volumes = {v["name"]: v for v in POD["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in CONTAINER["volumeMounts"]}

    assert security["runAsNonRoot"] is True
    assert (security["runAsUser"], security["runAsGroup"]) == (int(uid), int(gid))
    assert container["readOnlyRootFilesystem"] is True
    assert container["allowPrivilegeEscalation"] is False
    assert container["capabilities"]["drop"] == ["ALL"]
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert volumes[mounts["/etc/task-gateway"]]["configMap"]["name"] == "task-gateway-config"


def _secret_keys_the_pod_reads() -> dict[str, set[str]]:
    """Secret name -> the keys the pod reads: from env, and the files the settings name."""
    secret_of = {
        v["name"]: v["secret"]["secretName"] for v in POD["spec"]["volumes"] if "secret" in v
    }
    mounted = {
        m["mountPath"]: secret_of[m["name"]]
        for m in CONTAINER["volumeMounts"]
        if m["name"] in secret_of
    }
    read: dict[str, set[str]] = {name: set() for name in secret_of.values()}
    for variable in CONTAINER["env"]:
        if ref := variable.get("valueFrom", {}).get("secretKeyRef"):
            read.setdefault(ref["name"], set()).add(ref["key"])
    settings = k8s_settings()
    for file in [
        *settings["grpc"]["tls"].values(),
        *settings["server"]["tls"].values(),
        *settings["broker"]["tls"].values(),
        settings["auth"]["clients_file"],
    ]:
        directory, _, key = file.rpartition("/")
        read[mounted[directory]].add(key)
    return read


def test_every_secret_the_pod_reads_is_described_with_its_keys() -> None:
    """Each Secret and key the pod reads (env, certificate and clients files) is in the example."""
    examples = {
        s["metadata"]["name"]: set(s["stringData"])
        for s in yaml.safe_load_all((K8S / "secrets.example.yaml").read_text())
    }

    read = _secret_keys_the_pod_reads()

    assert set(read) == set(examples)
    for name, keys in read.items():
        assert keys <= examples[name], name


def test_the_network_policy_opens_exactly_the_containers_ports() -> None:
    """Clients reach gRPC and HTTP, monitoring reaches admin; egress only to AMQP and DNS."""
    policy = OBJECTS["NetworkPolicy", "task-gateway"]["spec"]

    def ports(rule: dict[str, Any]) -> set[int]:
        return {p["port"] for p in rule["ports"]}

    clients, monitoring = policy["ingress"]
    broker, dns = policy["egress"]
    assert _selects_the_pods(policy["podSelector"]["matchLabels"])
    assert ports(clients) == {PORTS["grpc"], PORTS["http"]}
    assert ports(monitoring) == {PORTS["admin"]}
    assert ports(broker) == {5671, 5672}
    assert {(p["port"], p["protocol"]) for p in dns["ports"]} == {(53, "UDP"), (53, "TCP")}
