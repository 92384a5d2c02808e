"""The Kubernetes manifests (deploy/kubernetes, ADR 0021): every overlay renders with kubectl's
kustomize, matches the Kubernetes 1.37 schemas, keeps our rules (non-root, read-only, probes,
limits, disruption budgets, replicas within partitions, a closed registry, resolvable Secret
references), and a real kube-apiserver accepts them and rolls them out on kwok's fake nodes.
Broken copies prove each check can fail.

The cluster tests build etcd, kube-apiserver, the controller-manager, the scheduler and kwok
from source on first use (localinfra.kube_build; cached afterwards).
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_validate import (  # type: ignore[import-untyped]
    ValidationError,
    validate,
)

from imap_verifier.config import Settings as VerifierConfig
from imap_verifier.handlers import FAILURE_GRACE
from localinfra.kube import KubeCluster
from localinfra.kube_build import kubernetes_wrapper_go_mod
from mailbox_link_contract.topics import CATALOGUE, SERVICES, topics_consumed_by
from mailbox_link_shared.kafka import REVOKE_GRACE_SECONDS

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy" / "kubernetes"
OVERLAYS = ("production", "local")
K8S_SCHEMA_VERSION = "1.37.0"
LOCAL_NAMESPACE = "mailbox-link-local"
CONNECTED_TIMEOUT = 3600  # the first run builds the control plane (about 20 minutes)

Doc = dict[str, Any]


# --- rendering ------------------------------------------------------------------------


def kubectl_binary() -> str:
    found = shutil.which("kubectl")
    if found is None:
        pytest.fail("kubectl not found: it renders the overlays (kustomize) and applies them")
    return found


def render(directory: Path) -> list[Doc]:
    """`kubectl kustomize` of an overlay, as objects."""
    result = subprocess.run(
        [kubectl_binary(), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, f"kustomize {directory} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def to_yaml(docs: list[Doc]) -> str:
    return yaml.safe_dump_all(docs, sort_keys=False)


def of_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [doc for doc in docs if doc["kind"] == kind]


def named(docs: list[Doc], kind: str, name: str) -> Doc:
    return next(doc for doc in of_kind(docs, kind) if doc["metadata"]["name"] == name)


def documented_operator_secrets() -> set[str]:
    """The Secrets operators create themselves: the blocks of base/secrets.example.env."""
    text = (KUBE / "base" / "secrets.example.env").read_text()
    return set(re.findall(r"^# --- Secret ([a-z0-9-]+)", text, flags=re.MULTILINE))


def write_local_secrets_overlay(directory: Path) -> Path:
    """The local overlay plus every Secret it references, generated from test-time values
    (a secretGenerator over files written here; nothing real, nothing committed)."""
    directory.mkdir(parents=True, exist_ok=True)
    key = "A" * 43 + "="  # 32 zero-ish bytes in base64: a placeholder, never used to seal
    token = "t" * 32
    values = {
        "mailbox-link-encryption-keys": {"MBL_ENCRYPTION_KEYS": json.dumps({"k1": key})},
        "mailbox-link-mongodb": {"MBL_MONGODB_URI": "mongodb://mbl:test@mongodb:27017"},
        "mailbox-link-link-api": {
            "MBL_SERVICE_KEYS": json.dumps({"crm": token}),
            "MBL_REGISTRY_TOKEN": token,
        },
        "mailbox-link-registry": {"MBL_SERVICE_KEYS": json.dumps({"link-api": token})},
        "mailbox-link-oauth-broker": {"MBL_SERVICE_KEYS": json.dumps({"product": token})},
    }
    generators = []
    for name, pairs in values.items():
        env_file = directory / f"{name}.env"
        env_file.write_text("".join(f"{k}={v}\n" for k, v in pairs.items()))
        generators.append({"name": name, "envs": [env_file.name]})
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        # kustomize takes no absolute root, but a relative path may climb anywhere.
        "resources": [os.path.relpath(KUBE / "overlays" / "local", directory)],
        "secretGenerator": generators,
        "generatorOptions": {"disableNameSuffixHash": True},
    }
    (directory / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return directory


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Doc]]:
    return {overlay: render(KUBE / "overlays" / overlay) for overlay in OVERLAYS}


@pytest.fixture(scope="module")
def local_with_secrets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_local_secrets_overlay(tmp_path_factory.mktemp("kube-local-secrets"))


# --- our checks -----------------------------------------------------------------------


def pod_specs(docs: list[Doc]) -> Iterator[tuple[str, Doc]]:
    for doc in docs:
        if doc["kind"] in ("Deployment", "Job"):
            yield f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"]["spec"]


def unresolved_references(docs: list[Doc], provided: set[str]) -> list[str]:
    """Every Secret and ConfigMap a pod names (env, envFrom, volumes) that the rendered
    overlay does not define and operators are not documented to provide. The API server
    accepts such pods; they then never start (CreateContainerConfigError)."""
    defined = {(doc["kind"], doc["metadata"]["name"]) for doc in docs}
    problems = []

    def need(kind: str, name: object, where: str) -> None:
        if not isinstance(name, str) or not name:
            problems.append(f"{where}: a {kind} reference without a name")
        elif (kind, name) not in defined and not (kind == "Secret" and name in provided):
            problems.append(f"{where}: {kind} {name!r} is neither defined nor operator-provided")

    for where, spec in pod_specs(docs):
        for container in spec.get("initContainers", []) + spec["containers"]:
            for env in container.get("env", []):
                source = env.get("valueFrom", {})
                if "secretKeyRef" in source:
                    need("Secret", source["secretKeyRef"].get("name"), where)
                if "configMapKeyRef" in source:
                    need("ConfigMap", source["configMapKeyRef"].get("name"), where)
            for env_from in container.get("envFrom", []):
                if "secretRef" in env_from:
                    need("Secret", env_from["secretRef"].get("name"), where)
                if "configMapRef" in env_from:
                    need("ConfigMap", env_from["configMapRef"].get("name"), where)
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                need("Secret", volume["secret"].get("secretName"), where)
            if "configMap" in volume:
                need("ConfigMap", volume["configMap"].get("name"), where)
    for ingress in of_kind(docs, "Ingress"):
        for tls in ingress["spec"].get("tls", []):
            need("Secret", tls.get("secretName"), f"Ingress/{ingress['metadata']['name']}")
    return problems


def container_problems(docs: list[Doc]) -> list[str]:
    """Each container: non-root, read-only root, no privilege escalation, drops ALL,
    RuntimeDefault seccomp, requests and limits; a Deployment's also three probes."""
    problems = []
    for doc in of_kind(docs, "Deployment") + of_kind(docs, "Job"):
        spec = doc["spec"]["template"]["spec"]
        pod_security = spec.get("securityContext", {})
        for container in spec["containers"]:
            where = f"{doc['kind']}/{doc['metadata']['name']}/{container['name']}"
            security = {**pod_security, **container.get("securityContext", {})}
            if security.get("runAsNonRoot") is not True or security.get("runAsUser") in (None, 0):
                problems.append(f"{where}: may run as root")
            if security.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where}: writable root filesystem")
            if security.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: privilege escalation allowed")
            if security.get("capabilities", {}).get("drop") != ["ALL"]:
                problems.append(f"{where}: capabilities not all dropped")
            if security.get("seccompProfile", {}).get("type") != "RuntimeDefault":
                problems.append(f"{where}: no RuntimeDefault seccomp profile")
            resources = container.get("resources", {})
            for bound in ("requests", "limits"):
                if set(resources.get(bound, {})) != {"cpu", "memory"}:
                    problems.append(f"{where}: {bound} lack cpu or memory")
            mounts = {mount["mountPath"] for mount in container.get("volumeMounts", [])}
            if "/tmp" not in mounts:
                problems.append(f"{where}: no writable /tmp")
            if doc["kind"] == "Deployment":
                for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                    if probe not in container:
                        problems.append(f"{where}: no {probe}")
        if doc["kind"] == "Deployment" and spec.get("automountServiceAccountToken") is not False:
            problems.append(f"Deployment/{doc['metadata']['name']}: mounts an API token")
    return problems


def selects(selector: Doc, labels: dict[str, str]) -> bool:
    match = selector.get("matchLabels", {})
    return all(labels.get(k) == v for k, v in match.items()) and not selector.get(
        "matchExpressions"
    )


def unbudgeted_deployments(docs: list[Doc]) -> list[str]:
    budgets = [doc["spec"]["selector"] for doc in of_kind(docs, "PodDisruptionBudget")]
    return [
        doc["metadata"]["name"]
        for doc in of_kind(docs, "Deployment")
        if not any(selects(b, doc["spec"]["template"]["metadata"]["labels"]) for b in budgets)
    ]


def topic_partitions(docs: list[Doc]) -> dict[str, int]:
    """Partitions per topic: the catalogue's, overridden by the overlay's
    MBL_KAFKA_TOPIC_PARTITIONS."""
    partitions = {spec.name: spec.partitions for spec in CATALOGUE}
    config = named(docs, "ConfigMap", config_map_name(docs))["data"]
    override = json.loads(config.get("MBL_KAFKA_TOPIC_PARTITIONS", "{}"))
    assert set(override) <= set(partitions), f"unknown topics in the overlay: {override}"
    return {**partitions, **override}


def config_map_name(docs: list[Doc]) -> str:
    return str(
        next(
            doc["metadata"]["name"]
            for doc in of_kind(docs, "ConfigMap")
            if doc["metadata"]["name"].startswith("mailbox-link-config")
        )
    )


def most_replicas(docs: list[Doc], deployment: str) -> int:
    """The most pods a Deployment can have: its HPA's maxReplicas, else its replicas."""
    for hpa in of_kind(docs, "HorizontalPodAutoscaler"):
        if hpa["spec"]["scaleTargetRef"]["name"] == deployment:
            return int(hpa["spec"]["maxReplicas"])
    return int(named(docs, "Deployment", deployment)["spec"].get("replicas", 1))


def partition_problems(docs: list[Doc]) -> list[str]:
    """A consumer with more replicas than a topic it reads has partitions leaves the extra
    replicas idle, and hides that capacity is missing."""
    partitions = topic_partitions(docs)
    problems = []
    for service in SERVICES:
        replicas = most_replicas(docs, service)
        for spec in topics_consumed_by(service):
            if replicas > partitions[spec.name]:
                problems.append(
                    f"{service}: up to {replicas} replicas, but {spec.name} has "
                    f"{partitions[spec.name]} partitions"
                )
    return problems


MONITORING_PEER: Doc = {
    "namespaceSelector": {"matchLabels": {"mailbox-link.io/monitoring": "true"}}
}
OTLP_HTTP_PORT = 4318


def matches(selector: Doc, labels: dict[str, str]) -> bool:
    """A label selector (matchLabels and matchExpressions) against a pod's labels."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values", [])
        held = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[operator]
        if not held:
            return False
    return True


def admitted(docs: list[Doc], labels: dict[str, str], direction: str) -> list[tuple[Doc, Doc]]:
    """(peer, port) pairs the NetworkPolicies selecting these pods admit in one direction
    ("Ingress" or "Egress"); a rule without ports admits every port ({})."""
    side = "from" if direction == "Ingress" else "to"
    pairs = []
    for policy in of_kind(docs, "NetworkPolicy"):
        spec = policy["spec"]
        if direction not in spec["policyTypes"] or not matches(spec["podSelector"], labels):
            continue
        for rule in spec.get(direction.lower(), []):
            for peer in rule.get(side, []):
                pairs += [(peer, port) for port in rule.get("ports", [{}])]
    return pairs


def scrape_problems(docs: list[Doc]) -> list[str]:
    """Each Deployment's pods say how Prometheus scrapes them (prometheus.io/scrape, port,
    path), the port is one their container declares, the path /metrics, and a NetworkPolicy
    admits the monitoring namespace to that port (by number or by the port's name)."""
    problems = []
    for deployment in of_kind(docs, "Deployment"):
        name = deployment["metadata"]["name"]
        template = deployment["spec"]["template"]
        annotations = template["metadata"].get("annotations", {})
        if annotations.get("prometheus.io/scrape") != "true":
            problems.append(f"{name}: not marked prometheus.io/scrape=true")
        if annotations.get("prometheus.io/path") != "/metrics":
            problems.append(f"{name}: prometheus.io/path is not /metrics")
        declared = {
            str(port["containerPort"]): port.get("name")
            for container in template["spec"]["containers"]
            for port in container.get("ports", [])
        }
        number = annotations.get("prometheus.io/port")
        if number not in declared:
            problems.append(f"{name}: prometheus.io/port {number} is no container port")
            continue
        reachable = {int(number), declared[number]}
        if not any(
            peer == MONITORING_PEER and (not port or port["port"] in reachable)
            for peer, port in admitted(docs, template["metadata"]["labels"], "Ingress")
        ):
            problems.append(f"{name}: no NetworkPolicy admits the monitoring namespace to it")
    return problems


# --- rendered manifests (no cluster) ------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_overlay_renders_and_matches_the_kubernetes_1_37_schemas(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    docs = rendered[overlay]
    kinds = {doc["kind"] for doc in docs}
    assert {"Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy", "Job"} <= kinds
    assert {d["metadata"]["name"] for d in of_kind(docs, "Deployment")} == set(SERVICES)
    for doc in docs:
        validate(doc, K8S_SCHEMA_VERSION, strict=True)


def test_the_kubernetes_validate_cli_passes_every_rendered_document(
    rendered: dict[str, list[Doc]], tmp_path: Path
) -> None:
    cli = Path(sys.executable).parent / "kubernetes-validate"
    assert cli.exists(), "kubernetes-validate is a dev dependency: uv sync"
    for overlay, docs in rendered.items():
        path = tmp_path / f"{overlay}.yaml"
        path.write_text(to_yaml(docs))
        result = subprocess.run(
            [cli, "-k", K8S_SCHEMA_VERSION, "--strict", "--quiet", str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_refuses_a_secret_key_ref_without_a_key(
    rendered: dict[str, list[Doc]],
) -> None:
    broken = copy.deepcopy(named(rendered["production"], "Deployment", "registry"))
    env = broken["spec"]["template"]["spec"]["containers"][0]["env"]
    del env[0]["valueFrom"]["secretKeyRef"]["key"]
    with pytest.raises(ValidationError, match="key"):
        validate(broken, K8S_SCHEMA_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_is_non_root_read_only_without_capabilities_with_limits_and_probes(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    assert container_problems(rendered[overlay]) == []


def test_the_container_check_catches_a_root_container_without_probes(
    rendered: dict[str, list[Doc]],
) -> None:
    docs = copy.deepcopy(rendered["production"])
    container = named(docs, "Deployment", "link-api")["spec"]["template"]["spec"]["containers"][0]
    container["securityContext"]["runAsUser"] = 0
    del container["livenessProbe"]
    problems = container_problems(docs)
    assert problems == [
        "Deployment/link-api/link-api: may run as root",
        "Deployment/link-api/link-api: no livenessProbe",
    ]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_deployment_has_a_disruption_budget(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    docs = rendered[overlay]
    assert unbudgeted_deployments(docs) == []
    without = [d for d in docs if d["kind"] != "PodDisruptionBudget" or "registry" not in str(d)]
    assert unbudgeted_deployments(without) == ["registry"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_consumer_can_have_more_replicas_than_its_topics_have_partitions(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    assert partition_problems(rendered[overlay]) == []


def test_the_partition_check_refuses_seven_registry_replicas_or_a_larger_autoscaler(
    rendered: dict[str, list[Doc]],
) -> None:
    docs = copy.deepcopy(rendered["production"])
    named(docs, "Deployment", "registry")["spec"]["replicas"] = 7
    named(docs, "HorizontalPodAutoscaler", "link-api")["spec"]["maxReplicas"] = 12
    problems = partition_problems(docs)
    assert any(p.startswith("registry: up to 7 replicas") for p in problems), problems
    assert any(p.startswith("link-api: up to 12 replicas") for p in problems), problems


def test_the_partition_check_follows_the_overlays_partition_counts(
    rendered: dict[str, list[Doc]],
) -> None:
    docs = copy.deepcopy(rendered["production"])
    config = named(docs, "ConfigMap", config_map_name(docs))["data"]
    config["MBL_KAFKA_TOPIC_PARTITIONS"] = json.dumps({"link-requests.v1": 2})
    assert "registry: up to 3 replicas, but link-requests.v1 has 2 partitions" in (
        partition_problems(docs)
    )


def test_production_creates_topics_with_the_job_and_three_replicas(
    rendered: dict[str, list[Doc]],
) -> None:
    docs = rendered["production"]
    config = named(docs, "ConfigMap", config_map_name(docs))["data"]
    assert config["MBL_KAFKA_CREATE_TOPICS"] == "false"
    assert (config["MBL_KAFKA_REPLICATION_FACTOR"], config["MBL_KAFKA_MIN_INSYNC_REPLICAS"]) == (
        "3",
        "2",
    )
    job = named(docs, "Job", "mailbox-link-topics")["spec"]["template"]["spec"]["containers"][0]
    assert job["command"] == ["python", "-m", "mailbox_link_shared.topics", "ensure"]
    assert job["envFrom"] == [{"configMapRef": {"name": config_map_name(docs)}}]
    local = rendered["local"]
    local_config = named(local, "ConfigMap", config_map_name(local))["data"]
    assert local_config["MBL_KAFKA_REPLICATION_FACTOR"] == "1"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_get_longer_to_stop_than_the_consumers_grace(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    docs = rendered[overlay]
    stop_grace = float(
        named(docs, "ConfigMap", config_map_name(docs))["data"]["MBL_STOP_GRACE_SECONDS"]
    )
    longest_check = VerifierConfig.model_fields["verifier_timeout_seconds"].default + FAILURE_GRACE
    assert stop_grace > longest_check  # a rolling update cuts no mail check off
    for deployment in of_kind(docs, "Deployment"):
        grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        # Time to commit and leave the group (a rebalance's callback) after the stop grace.
        assert grace >= stop_grace + REVOKE_GRACE_SECONDS + 5, deployment["metadata"]["name"]


def test_the_oauth_broker_runs_alone_and_never_two_during_a_rollout(
    rendered: dict[str, list[Doc]],
) -> None:
    for overlay in OVERLAYS:
        broker = named(rendered[overlay], "Deployment", "oauth-broker")["spec"]
        assert broker["replicas"] == 1
        assert broker["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}


def test_the_registry_admits_only_link_api_operators_monitoring_and_mailbox_access(
    rendered: dict[str, list[Doc]],
) -> None:
    docs = rendered["production"]
    registry = named(docs, "Deployment", "registry")["spec"]["template"]
    # The registry's own policy and the metrics one (the default deny has no rules), on the
    # registry's one port: 8081, which its container names http.
    pairs = admitted(docs, registry["metadata"]["labels"], "Ingress")
    api_port = {"protocol": "TCP", "port": 8081}
    assert sorted(json.dumps(pair, sort_keys=True) for pair in pairs) == sorted(
        json.dumps(pair, sort_keys=True)
        for pair in [
            ({"podSelector": {"matchLabels": {"app.kubernetes.io/name": "link-api"}}}, api_port),
            (
                {"namespaceSelector": {"matchLabels": {"mailbox-link.io/operators": "true"}}},
                api_port,
            ),
            # Internal services granted mailbox access (docs/adr/0023).
            (
                {"podSelector": {"matchLabels": {"mailbox-link.io/mailbox-access": "true"}}},
                api_port,
            ),
            (
                {"namespaceSelector": {"matchLabels": {"mailbox-link.io/mailbox-access": "true"}}},
                api_port,
            ),
            (MONITORING_PEER, {"protocol": "TCP", "port": "http"}),
        ]
    )
    assert registry["spec"]["containers"][0]["ports"] == [{"name": "http", "containerPort": 8081}]
    deny = named(docs, "NetworkPolicy", "mailbox-link-default-deny")["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}


def test_the_policy_reader_sees_selectors_by_expression(rendered: dict[str, list[Doc]]) -> None:
    docs = copy.deepcopy(rendered["production"])
    everyone: Doc = {"namespaceSelector": {}}
    named(docs, "NetworkPolicy", "mailbox-link-metrics")["spec"]["ingress"][0]["from"] = [everyone]
    registry = named(docs, "Deployment", "registry")["spec"]["template"]["metadata"]["labels"]
    assert (everyone, {"protocol": "TCP", "port": "http"}) in admitted(docs, registry, "Ingress")
    assert not matches({"matchExpressions": [{"key": "x", "operator": "Exists"}]}, registry)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_deployment_is_scraped_on_a_declared_port_the_monitoring_namespace_reaches(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    assert scrape_problems(rendered[overlay]) == []


def test_the_scrape_check_catches_a_wrong_port_a_wrong_path_and_a_closed_policy(
    rendered: dict[str, list[Doc]],
) -> None:
    docs = copy.deepcopy(rendered["production"])
    annotations = named(docs, "Deployment", "link-api")["spec"]["template"]["metadata"][
        "annotations"
    ]
    annotations["prometheus.io/port"] = "9090"
    named(docs, "Deployment", "registry")["spec"]["template"]["metadata"]["annotations"][
        "prometheus.io/path"
    ] = "/healthz"
    assert scrape_problems(docs) == [
        "link-api: prometheus.io/port 9090 is no container port",
        "registry: prometheus.io/path is not /metrics",
    ]
    closed = [d for d in docs if d["metadata"]["name"] != "mailbox-link-metrics"]
    assert "imap-verifier: no NetworkPolicy admits the monitoring namespace to it" in (
        scrape_problems(closed)
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_service_may_send_spans_to_a_collector_in_the_monitoring_namespace(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    docs = rendered[overlay]
    for deployment in of_kind(docs, "Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert (MONITORING_PEER, {"protocol": "TCP", "port": OTLP_HTTP_PORT}) in admitted(
            docs, labels, "Egress"
        ), deployment["metadata"]["name"]


def test_the_podmonitor_example_scrapes_every_service_with_the_alerts_job_names(
    rendered: dict[str, list[Doc]],
) -> None:
    (monitor,) = yaml.safe_load_all((KUBE / "examples" / "podmonitor.yaml").read_text())
    assert monitor["kind"] == "PodMonitor"
    # The job label is the pod's service name: deploy/prometheus/alerts.yml's job names.
    assert monitor["spec"]["jobLabel"] == "app.kubernetes.io/name"
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    docs = rendered["production"]
    for deployment in of_kind(docs, "Deployment"):
        template = deployment["spec"]["template"]
        assert matches(monitor["spec"]["selector"], template["metadata"]["labels"])
        ports = {p["name"]: p["containerPort"] for p in template["spec"]["containers"][0]["ports"]}
        annotations = template["metadata"]["annotations"]
        assert str(ports[endpoint["port"]]) == annotations["prometheus.io/port"]
        assert endpoint["path"] == annotations["prometheus.io/path"]
    # An example only: no overlay applies a resource whose CRD a cluster may not have.
    for kustomization in KUBE.rglob("kustomization.yaml"):
        assert "examples" not in kustomization.read_text(), kustomization


def test_the_verifier_leaves_the_cluster_only_to_public_mail_ports(
    rendered: dict[str, list[Doc]],
) -> None:
    policy = named(rendered["production"], "NetworkPolicy", "imap-verifier-egress")["spec"]
    (rule,) = policy["egress"]
    assert {p["port"] for p in rule["ports"]} == {25, 110, 143, 465, 587, 993, 995, 2525}
    for peer in rule["to"]:
        assert "10.0.0.0/8" in peer["ipBlock"]["except"] or "fc00::/7" in peer["ipBlock"]["except"]


def test_every_secret_reference_resolves_in_the_local_overlay_with_its_secrets(
    local_with_secrets: Path,
) -> None:
    docs = render(local_with_secrets)
    assert unresolved_references(docs, provided=set()) == []


def test_production_references_only_secrets_the_operator_is_told_to_create(
    rendered: dict[str, list[Doc]],
) -> None:
    provided = documented_operator_secrets()
    assert "mailbox-link-tls" in provided
    assert unresolved_references(rendered["production"], provided) == []


def test_the_reference_check_refuses_a_secret_nobody_defines(
    rendered: dict[str, list[Doc]],
) -> None:
    docs = copy.deepcopy(rendered["production"])
    spec = named(docs, "Deployment", "imap-verifier")["spec"]["template"]["spec"]
    spec["containers"][0]["envFrom"].append({"secretRef": {"name": "mailbox-link-typo"}})
    assert unresolved_references(docs, documented_operator_secrets()) == [
        "Deployment/imap-verifier: Secret 'mailbox-link-typo' is neither defined nor "
        "operator-provided"
    ]


def test_the_build_wrapper_repeats_each_staging_replace_with_its_published_version() -> None:
    kubernetes_go_mod = (
        "module k8s.io/kubernetes\n\nreplace (\n"
        "\tk8s.io/api => ./staging/src/k8s.io/api\n"
        "\tk8s.io/client-go => ./staging/src/k8s.io/client-go\n"
        "\tgithub.com/example/x => github.com/example/x v1.0.0\n)\n"
    )
    wrapper = kubernetes_wrapper_go_mod(kubernetes_go_mod)
    assert "require k8s.io/kubernetes v1.37.2" in wrapper
    assert (
        "\tk8s.io/api => k8s.io/api v0.37.2\n\tk8s.io/client-go => k8s.io/client-go v0.37.2\n"
        in (wrapper)
    )
    assert "example" not in wrapper


def service_settings() -> set[str]:
    """Every variable some service reads: MBL_<field> of its Settings, and the standard
    OTEL_* names tracing reads."""
    from imap_verifier.config import Settings as VerifierSettings
    from link_api.config import Settings as LinkApiSettings
    from mailbox_link_shared.settings import (
        KafkaSettings,  # the topics command's
        environment_variables,
    )
    from oauth_broker.config import Settings as BrokerSettings
    from registry.config import Settings as RegistrySettings

    return environment_variables(
        LinkApiSettings, RegistrySettings, VerifierSettings, BrokerSettings, KafkaSettings
    )


def is_known_setting(variable: str, known: set[str]) -> bool:
    # Nested broker settings: MBL_OAUTH_GOOGLE__CLIENT_SECRET is the field oauth_google.
    return variable in known or variable.split("__")[0] in known


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_variable_the_manifests_set_is_a_real_setting(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    known = service_settings()
    docs = rendered[overlay]
    variables = set(named(docs, "ConfigMap", config_map_name(docs))["data"])
    for _, spec in pod_specs(docs):
        for container in spec["containers"]:
            variables |= {env["name"] for env in container.get("env", [])}
    example = (KUBE / "base" / "secrets.example.env").read_text()
    variables |= set(re.findall(r"^(MBL_[A-Z0-9_<>]+)=", example, flags=re.MULTILINE))
    variables = {v.replace("<NAME>", "X") for v in variables}
    unknown = sorted(v for v in variables if not is_known_setting(v, known))
    assert unknown == []
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" in variables
    assert not is_known_setting("MBL_KAFKA_BOOTSTRAP_SERVER", known)  # a typo is caught
    # Tracing reads the standard name, not an MBL_ one; service.name comes from the code, so
    # an OTEL_SERVICE_NAME would be ignored (and one name for four services is wrong anyway).
    assert not is_known_setting("MBL_OTEL_EXPORTER_OTLP_ENDPOINT", known)
    assert not is_known_setting("OTEL_EXPORTER_OTLP_ENDPIONT", known)
    assert not is_known_setting("OTEL_SERVICE_NAME", known)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_logs_are_json_and_tracing_is_off_until_an_endpoint_is_set(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    docs = rendered[overlay]
    config = named(docs, "ConfigMap", config_map_name(docs))["data"]
    assert config["MBL_LOG_FORMAT"] == "json"
    assert config["OTEL_EXPORTER_OTLP_ENDPOINT"] == ""  # empty: off (shared/tests/test_tracing)
    for deployment in of_kind(docs, "Deployment"):
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert {"configMapRef": {"name": config_map_name(docs)}} in container["envFrom"]


# --- a real API server ----------------------------------------------------------------


@pytest.fixture(scope="module")
def kube_manifests_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeCluster]:
    """One control plane with two fake nodes for every cluster test of this module."""
    with KubeCluster(tmp_path_factory.mktemp("kube-cluster")) as cluster:
        print(f"kube cluster started in {cluster.start_seconds:.1f} s")
        yield cluster


def dry_run(cluster: KubeCluster, docs: list[Doc]) -> subprocess.CompletedProcess[str]:
    return cluster.kubectl("apply", "--dry-run=server", "-f", "-", stdin=to_yaml(docs), check=False)


@pytest.mark.connected
@pytest.mark.timeout(CONNECTED_TIMEOUT)
def test_the_api_server_accepts_every_overlay(
    kube_manifests_cluster: KubeCluster, rendered: dict[str, list[Doc]]
) -> None:
    for overlay, docs in rendered.items():
        namespaces = {d["metadata"].get("namespace") for d in docs} - {None}
        for namespace in namespaces - {d["metadata"]["name"] for d in of_kind(docs, "Namespace")}:
            kube_manifests_cluster.kubectl("create", "namespace", str(namespace), check=False)
        # A Namespace in the same stream must exist before dry-running what goes into it.
        for namespace_doc in of_kind(docs, "Namespace"):
            kube_manifests_cluster.kubectl("apply", "-f", "-", stdin=to_yaml([namespace_doc]))
        result = dry_run(kube_manifests_cluster, docs)
        assert result.returncode == 0, f"{overlay}:\n{result.stderr}"
        assert result.stdout.count("(server dry run)") == len(docs), result.stdout


@pytest.mark.connected
@pytest.mark.timeout(CONNECTED_TIMEOUT)
def test_the_api_server_refuses_a_deployment_whose_selector_misses_its_pods(
    kube_manifests_cluster: KubeCluster, rendered: dict[str, list[Doc]]
) -> None:
    broken = copy.deepcopy(named(rendered["production"], "Deployment", "registry"))
    broken["spec"]["selector"]["matchLabels"] = {"app.kubernetes.io/name": "not-registry"}
    validate(broken, K8S_SCHEMA_VERSION, strict=True)  # the schema cannot see it
    kube_manifests_cluster.kubectl("create", "namespace", "mailbox-link", check=False)
    result = dry_run(kube_manifests_cluster, [broken])
    assert result.returncode != 0
    assert "selector` does not match template `labels`" in result.stderr


@pytest.mark.connected
@pytest.mark.timeout(CONNECTED_TIMEOUT)
def test_the_api_server_refuses_a_secret_key_ref_without_a_name(
    kube_manifests_cluster: KubeCluster, rendered: dict[str, list[Doc]]
) -> None:
    broken = copy.deepcopy(named(rendered["production"], "Deployment", "registry"))
    env = broken["spec"]["template"]["spec"]["containers"][0]["env"]
    del env[0]["valueFrom"]["secretKeyRef"]["name"]
    kube_manifests_cluster.kubectl("create", "namespace", "mailbox-link", check=False)
    result = dry_run(kube_manifests_cluster, [broken])
    assert result.returncode != 0
    # An absent name is an empty one, which is not a valid object name.
    assert 'secretKeyRef.name: Invalid value: ""' in result.stderr, result.stderr


@pytest.mark.connected
@pytest.mark.timeout(CONNECTED_TIMEOUT)
def test_the_local_overlay_rolls_out_on_fake_nodes(
    kube_manifests_cluster: KubeCluster, local_with_secrets: Path
) -> None:
    cluster = kube_manifests_cluster
    started = time.monotonic()
    cluster.kubectl("apply", "-k", str(local_with_secrets))
    for service in SERVICES:
        cluster.kubectl(
            "rollout", "status", f"deployment/{service}", "-n", LOCAL_NAMESPACE,
            "--timeout=120s", timeout=150,
        )  # fmt: skip
    rolled_out = time.monotonic() - started
    pods = json.loads(cluster.kubectl("get", "pods", "-n", LOCAL_NAMESPACE, "-o", "json").stdout)
    running = {
        pod["metadata"]["labels"]["app.kubernetes.io/name"]: pod["spec"]["nodeName"]
        for pod in pods["items"]
        if pod["status"].get("phase") == "Running"
    }
    assert set(SERVICES) <= set(running), running
    assert all(node.startswith("kwok-node-") for node in running.values())
    # The topics Job is accepted and scheduled; nothing runs on a fake node, so it never
    # completes here (kwok's pod-complete stage is left out on purpose).
    job = json.loads(
        cluster.kubectl(
            "get", "job", "mailbox-link-topics", "-n", LOCAL_NAMESPACE, "-o", "json"
        ).stdout
    )
    assert job["spec"]["template"]["spec"]["containers"][0]["command"][-1] == "ensure"
    assert not job["status"].get("succeeded")
    print(f"local overlay rolled out in {rolled_out:.1f} s")


@pytest.mark.connected
@pytest.mark.timeout(CONNECTED_TIMEOUT)
def test_the_local_namespace_refuses_a_pod_that_may_run_as_root(
    kube_manifests_cluster: KubeCluster, rendered: dict[str, list[Doc]]
) -> None:
    docs = rendered["local"]
    kube_manifests_cluster.kubectl("apply", "-f", "-", stdin=to_yaml(of_kind(docs, "Namespace")))
    template = named(docs, "Deployment", "registry")["spec"]["template"]
    pod: Doc = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "registry-as-root", "namespace": LOCAL_NAMESPACE},
        "spec": copy.deepcopy(template["spec"]),
    }
    accepted = dry_run(kube_manifests_cluster, [pod])
    assert accepted.returncode == 0, accepted.stderr  # our pod passes "restricted" as it is
    for security in (
        pod["spec"]["securityContext"],
        pod["spec"]["containers"][0]["securityContext"],
    ):
        security.pop("runAsNonRoot")
        security.pop("runAsUser")
    refused = dry_run(kube_manifests_cluster, [pod])
    assert refused.returncode != 0
    assert 'violates PodSecurity "restricted:latest"' in refused.stderr, refused.stderr
