"""A real Kubernetes control plane on 127.0.0.1 with fake nodes, for testing manifests.

``KubeCluster`` starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok
(built and cached by ``localinfra.kube_build``) as processes in a temp dir, registers fake nodes
that kwok keeps Ready, and writes a kubeconfig. Deployments roll out onto those nodes (the
scheduler and controllers are the real ones) but no container ever runs: kwok only sets pod
status. Everything stops, process group by process group, on ``stop()`` / leaving ``with``.

``python -m localinfra.kube up`` starts one and prints the kubeconfig path until Ctrl-C.

kubectl without a kubeconfig calls http://localhost:8080, which is link-api's default port:
``KubeCluster.kubectl`` always passes ``--kubeconfig``.
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from types import TracebackType

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from localinfra.kube_build import install_kube, kube_bin, kwok_stages_file
from localinfra.ports import free_port
from localinfra.procs import ManagedProcess, wait_until_ready

# kwok manages only nodes carrying this annotation (its documented convention), so a cluster
# that also had real nodes would keep them.
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
SERVICE_CIDR = "10.96.0.0/16"


class KubeCluster:
    """etcd + kube-apiserver + controller-manager + scheduler + kwok, on loopback ports."""

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        nodes: int = 2,
        node_cpu: str = "8",
        node_memory: str = "32Gi",
    ) -> None:
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="mbl-kube-"))
        self.nodes = nodes
        self.node_cpu = node_cpu
        self.node_memory = node_memory
        self.kubeconfig = self.workdir / "kubeconfig"
        self.api_port = 0
        self._etcd_url = ""
        self._token = secrets.token_urlsafe(32)
        self._procs: list[ManagedProcess] = []
        self.start_seconds = 0.0

    def __enter__(self) -> KubeCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def server(self) -> str:
        """The API server's URL."""
        return f"https://127.0.0.1:{self.api_port}"

    def start(self, timeout: float = 90.0) -> None:
        """Build (or find cached) binaries, start every component, wait for Ready nodes."""
        install_kube()
        started = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self._start_etcd(timeout)
            self._start_apiserver(timeout)
            self._write_kubeconfig()
            self._start_controllers()
            self._add_fake_nodes(timeout)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - started

    def stop(self) -> None:
        """Stop the components in reverse order; idempotent."""
        for proc in reversed(self._procs):
            proc.terminate()
        for proc in reversed(self._procs):
            proc.stop(timeout=10)
        self._procs.clear()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def kubectl(
        self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this cluster; raises with its output when ``check`` fails."""
        kubectl = shutil.which("kubectl")
        if kubectl is None:
            raise RuntimeError("kubectl not found on PATH: install it (apt-get install kubectl)")
        result = subprocess.run(
            [kubectl, f"--kubeconfig={self.kubeconfig}", *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"kubectl {' '.join(args)} failed ({result.returncode}):\n"
                f"{result.stdout[-2000:]}{result.stderr[-3000:]}"
            )
        return result

    # --- components -------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str]) -> ManagedProcess:
        proc = ManagedProcess(name, argv, self.workdir / "logs" / f"{name}.log", cwd=self.workdir)
        proc.start()
        self._procs.append(proc)
        return proc

    def _start_etcd(self, timeout: float) -> None:
        client, peer = free_port(), free_port()
        proc = self._spawn(
            "etcd",
            [
                str(kube_bin("etcd")),
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{client}",
                f"--advertise-client-urls=http://127.0.0.1:{client}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=default=http://127.0.0.1:{peer}",
                # A throw-away store: no fsync wait keeps it light on a busy machine.
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        self._etcd_url = f"http://127.0.0.1:{client}"
        wait_until_ready(proc, lambda: _etcd_healthy(self._etcd_url), timeout, "etcd /health")

    def _start_apiserver(self, timeout: float) -> None:
        private, public = _service_account_keys(self.workdir)
        tokens = self.workdir / "tokens.csv"
        # One admin identity for kubectl and the components: this cluster lives for one test.
        tokens.write_text(f'{self._token},admin,admin,"system:masters"\n')
        tokens.chmod(0o600)
        self.api_port = free_port()
        proc = self._spawn(
            "kube-apiserver",
            [
                str(kube_bin("kube-apiserver")),
                f"--etcd-servers={self._etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.api_port}",
                f"--cert-dir={self.workdir / 'apiserver-certs'}",
                f"--token-auth-file={tokens}",
                "--authorization-mode=RBAC",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={public}",
                f"--service-account-signing-key-file={private}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                # On 127.0.0.1 the endpoint reconciler would refuse the loopback address.
                "--endpoint-reconciler-type=none",
                # Fairness queues cost CPU and protect nothing in a one-user cluster.
                "--enable-priority-and-fairness=false",
            ],
        )
        wait_until_ready(proc, self._apiserver_ready, timeout, "kube-apiserver /readyz")

    def _apiserver_ready(self) -> bool:
        request = urllib.request.Request(  # noqa: S310 (our https URL)
            f"{self.server}/readyz", headers={"Authorization": f"Bearer {self._token}"}
        )
        context = ssl.create_default_context()
        # The API server's self-signed certificate, made at start in --cert-dir; this cluster
        # exists only on loopback for the length of a test.
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with urllib.request.urlopen(request, timeout=2, context=context) as response:  # noqa: S310
            return bool(response.status == 200)

    def _write_kubeconfig(self) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "mbl",
                    "cluster": {"server": self.server, "insecure-skip-tls-verify": True},
                }
            ],
            "users": [{"name": "admin", "user": {"token": self._token}}],
            "contexts": [{"name": "mbl", "context": {"cluster": "mbl", "user": "admin"}}],
            "current-context": "mbl",
        }
        self.kubeconfig.write_text(json.dumps(config, indent=2))
        self.kubeconfig.chmod(0o600)

    def _start_controllers(self) -> None:
        kubeconfig = f"--kubeconfig={self.kubeconfig}"
        self._spawn(
            "kube-controller-manager",
            [
                str(kube_bin("kube-controller-manager")),
                kubeconfig,
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                f"--service-account-private-key-file={self.workdir / 'sa.key'}",
                "--use-service-account-credentials=false",
            ],
        )
        self._spawn(
            "kube-scheduler",
            [
                str(kube_bin("kube-scheduler")),
                kubeconfig,
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
            ],
        )
        self._spawn(
            "kwok",
            [
                str(kube_bin("kwok")),
                kubeconfig,
                f"--config={kwok_stages_file()}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
                "--cidr=10.244.0.0/16",
                "--node-ip=10.0.0.1",
            ],
        )

    def _add_fake_nodes(self, timeout: float) -> None:
        items = [self._node(f"kwok-node-{index}") for index in range(self.nodes)]
        self.kubectl(
            "apply",
            "-f",
            "-",
            stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}),
        )
        kwok = next(proc for proc in self._procs if proc.name == "kwok")
        wait_until_ready(kwok, self._nodes_ready, timeout, "fake nodes Ready", interval=0.5)

    def _node(self, name: str) -> dict[str, object]:
        capacity = {"cpu": self.node_cpu, "memory": self.node_memory, "pods": "110"}
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "annotations": {KWOK_NODE_ANNOTATION: "fake"},
                "labels": {"type": "kwok", "kubernetes.io/hostname": name},
            },
            "status": {"capacity": capacity, "allocatable": capacity},
        }

    def _nodes_ready(self) -> bool:
        listed = json.loads(self.kubectl("get", "nodes", "-o", "json").stdout)
        ready = [
            node
            for node in listed["items"]
            for condition in node.get("status", {}).get("conditions", [])
            if condition["type"] == "Ready" and condition["status"] == "True"
        ]
        return len(ready) >= self.nodes


def _etcd_healthy(url: str) -> bool:
    with urllib.request.urlopen(f"{url}/health", timeout=2) as response:  # noqa: S310
        return bool(json.loads(response.read()).get("health") == "true")


def _service_account_keys(workdir: Path) -> tuple[Path, Path]:
    """The key pair the API server signs and checks service-account tokens with."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private, public = workdir / "sa.key", workdir / "sa.pub"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    private.chmod(0o600)
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


def main(argv: list[str] | None = None) -> int:
    """``python -m localinfra.kube up``: start a cluster, print its kubeconfig, wait for Ctrl-C."""
    parser = argparse.ArgumentParser(prog="python -m localinfra.kube", description=__doc__)
    parser.add_argument("command", choices=["up", "install"])
    args = parser.parse_args(argv)
    if args.command == "install":
        print(install_kube().describe())
        return 0
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    with KubeCluster() as cluster:
        print(
            json.dumps(
                {
                    "kubeconfig": str(cluster.kubeconfig),
                    "server": cluster.server,
                    "started_seconds": round(cluster.start_seconds, 1),
                }
            ),
            flush=True,
        )
        stopping.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
