"""Builds and caches a Kubernetes control plane from source: etcd, kube-apiserver,
kube-controller-manager, kube-scheduler and kwok (fake nodes), for the manifest tests.

No release binaries can be downloaded here and ``go install`` refuses kube-apiserver and etcd's
server (their modules use ``replace`` directives). So the code writes a small wrapper module per
project, requiring the real module and repeating its replaces with published versions, and
``go build``s the commands from it. The binaries land in
``cache_dir()/kube-<version>/bin``; a second call only checks that they are there.

Go's own caches (GOCACHE, GOMODCACHE) are left at their defaults on purpose: a build of the
same module versions elsewhere on the machine (a warm-up) then makes ours a link step.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from localinfra.cache import InstallResult, cache_dir
from localinfra.go_build import cached_go_build, download_module, run

K8S_VERSION = "1.37.2"
# The staging modules (k8s.io/api, client-go, ...) are published as v0.<minor>.<patch>.
K8S_STAGING_VERSION = "v0.37.2"
ETCD_VERSION = "3.6.16"
KWOK_VERSION = "0.8.0"

CONTROL_PLANE = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
BINARIES = ("etcd", *CONTROL_PLANE, "kwok")

_K8S_MODULE = "k8s.io/kubernetes"
_ETCD_MODULE = "go.etcd.io/etcd/server/v3"
_KWOK_MODULE = "sigs.k8s.io/kwok"
# A staging replace in k8s.io/kubernetes' go.mod: "k8s.io/api => ./staging/src/k8s.io/api".
_STAGING_REPLACE = re.compile(r"^\s*(k8s\.io/[\w.-]+)\s*=>\s*\./staging/src/\S+\s*$", re.MULTILINE)
# What kwok's fast stages need, minus pod-complete: nothing runs on a fake node, so a Job's
# pod must not pretend it finished.
KWOK_STAGES = (
    "node/fast/node-initialize.yaml",
    "node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "pod/fast/pod-ready.yaml",
    "pod/fast/pod-delete.yaml",
)


def kube_home() -> Path:
    """Where this Kubernetes version's binaries and kwok stages are cached."""
    return cache_dir() / f"kube-{K8S_VERSION}"


def kube_bin(name: str) -> Path:
    """The cached binary ``name`` (one of BINARIES)."""
    return kube_home() / "bin" / name


def kwok_stages_file() -> Path:
    """kwok's stage definitions (node heartbeat, pod ready and delete), one YAML stream."""
    return kube_home() / "kwok-stages.yaml"


def install_kube() -> InstallResult:
    """Build whatever is missing of BINARIES and the kwok stages; seconds when all are cached."""
    return cached_go_build(
        "kubernetes",
        kube_home(),
        lambda: not _missing() and kwok_stages_file().exists(),
        _build_missing,
        "the Kubernetes control plane for the manifest tests is built from source and needs "
        "Go >= 1.25",
    )


def _missing() -> list[str]:
    return [name for name in BINARIES if not kube_bin(name).exists()]


def _build_missing(go: str) -> str:
    missing = _missing()
    (kube_home() / "bin").mkdir(parents=True, exist_ok=True)
    if any(name in missing for name in CONTROL_PLANE):
        _build_kubernetes(go)
    if "etcd" in missing:
        _build_etcd(go)
    if "kwok" in missing or not kwok_stages_file().exists():
        _install_kwok(go)
    for name in missing:
        _check_runs(name)
    return f"built {', '.join(missing) or 'kwok stages'}"


def staging_replaces(kubernetes_go_mod: str) -> list[str]:
    """The modules k8s.io/kubernetes' go.mod replaces with its ./staging copies, sorted.

    Derived from the downloaded go.mod so a new Kubernetes version brings its own list.
    """
    return sorted(set(_STAGING_REPLACE.findall(kubernetes_go_mod)))


def kubernetes_wrapper_go_mod(kubernetes_go_mod: str) -> str:
    """go.mod of our wrapper: require k8s.io/kubernetes, and point each staging module at
    its published version (the go command ignores a dependency's own replaces)."""
    replaces = "".join(
        f"\t{module} => {module} {K8S_STAGING_VERSION}\n"
        for module in staging_replaces(kubernetes_go_mod)
    )
    return (
        "module mbl/kubebins\n\n"
        f"go 1.26.0\n\nrequire {_K8S_MODULE} v{K8S_VERSION}\n\n"
        f"replace (\n{replaces})\n"
    )


def _build_kubernetes(go: str) -> None:
    info = download_module(go, f"{_K8S_MODULE}@v{K8S_VERSION}")
    work = kube_home() / "src-kubernetes"
    work.mkdir(parents=True, exist_ok=True)
    (work / "go.mod").write_text(kubernetes_wrapper_go_mod(Path(info["GoMod"]).read_text()))
    (work / "tools.go").write_text(
        _tools_go([f"{_K8S_MODULE}/cmd/{name}/app" for name in CONTROL_PLANE])
    )
    run([go, "mod", "tidy"], cwd=work)
    commands = [f"{_K8S_MODULE}/cmd/{name}" for name in CONTROL_PLANE]
    # Same packages and flags as any other build of these versions: the compile cache is shared.
    run([go, "build", "-o", str(kube_home() / "bin") + "/", *commands], cwd=work)


def _build_etcd(go: str) -> None:
    work = kube_home() / "src-etcd"
    work.mkdir(parents=True, exist_ok=True)
    (work / "go.mod").write_text(
        f"module mbl/etcdbin\n\ngo 1.26.0\n\nrequire {_ETCD_MODULE} v{ETCD_VERSION}\n"
    )
    # etcd's main package cannot be imported; its etcdmain package keeps the requirement.
    (work / "tools.go").write_text(_tools_go([f"{_ETCD_MODULE}/etcdmain"]))
    run([go, "mod", "tidy"], cwd=work)
    run([go, "build", "-o", str(kube_bin("etcd")), _ETCD_MODULE], cwd=work)


def _install_kwok(go: str) -> None:
    if not kube_bin("kwok").exists():
        subprocess_env = {"GOBIN": str(kube_home() / "bin")}
        run([go, "install", f"{_KWOK_MODULE}/cmd/kwok@v{KWOK_VERSION}"], env=subprocess_env)
    source = Path(download_module(go, f"{_KWOK_MODULE}@v{KWOK_VERSION}")["Dir"])
    stages = [(source / "kustomize" / "stage" / path).read_text() for path in KWOK_STAGES]
    kwok_stages_file().write_text("\n---\n".join(stage.strip() for stage in stages) + "\n")


def _check_runs(name: str) -> None:
    check = subprocess.run(
        [kube_bin(name), "--version"], capture_output=True, text=True, check=False, timeout=60
    )
    if check.returncode != 0:
        kube_bin(name).unlink()  # the next call builds it again
        raise RuntimeError(f"built {name} does not run:\n{check.stdout}{check.stderr}")


def _tools_go(imports: list[str]) -> str:
    lines = "".join(f'\t_ "{path}"\n' for path in imports)
    return f"//go:build tools\n\npackage tools\n\nimport (\n{lines})\n"
