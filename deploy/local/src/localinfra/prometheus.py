"""A real Prometheus server for tests: Debian's package, run with our own config in a temp dir.

Installing the `prometheus` package may start its own service on :9090 (where an init
system runs); that one is stopped and disabled, and ours listens on a free loopback port with
storage, config and log in a temp dir, scraping the given targets (by job) every second and
loading the given rule files.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from localinfra.apt import find_binary, install_packages
from localinfra.cache import InstallResult
from localinfra.ports import free_port
from localinfra.procs import ManagedProcess, wait_until_ready

PACKAGES = ("prometheus",)  # brings promtool too


def install_prometheus() -> InstallResult:
    """Installs Debian's Prometheus (and promtool) unless there, and makes sure the package's
    own service is not left running on its default port."""
    result = install_packages("prometheus", PACKAGES)
    if result.action == "installed":
        _stop_packaged_service()
    return result


def promtool() -> str:
    """The path of promtool, installing the package if needed."""
    install_prometheus()
    found = find_binary("promtool")
    if found is None:
        raise RuntimeError("promtool missing after installing the prometheus package")
    return found


def _stop_packaged_service() -> None:
    # Without an init system (containers, CI) nothing was started; with one, apt starts the
    # packaged service: stop and disable it so it does not hold :9090 or scrape anything.
    for argv in (
        ["systemctl", "disable", "--now", "prometheus", "prometheus-node-exporter"],
        ["service", "prometheus", "stop"],
        ["service", "prometheus-node-exporter", "stop"],
    ):
        if shutil.which(argv[0]):
            subprocess.run(argv, capture_output=True, check=False, timeout=30)


class LocalPrometheus:
    """One Prometheus process scraping `targets` ({job: ["host:port", ...]}) every
    `scrape_interval` seconds, with `rule_files` loaded. Use as a context manager."""

    def __init__(
        self,
        targets: Mapping[str, Sequence[str]],
        *,
        rule_files: Sequence[Path] = (),
        scrape_interval: float = 1.0,
    ) -> None:
        self.targets = {job: list(addresses) for job, addresses in targets.items()}
        self.rule_files = [Path(p).resolve() for p in rule_files]
        self.scrape_interval = scrape_interval
        self.port = 0
        self.install: InstallResult | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._proc: ManagedProcess | None = None

    @property
    def url(self) -> str:
        """The base URL of the server's HTTP API."""
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> dict[str, Any]:
        """The prometheus.yml this server runs with."""
        interval = f"{int(self.scrape_interval * 1000)}ms"
        return {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "rule_files": [str(path) for path in self.rule_files],
            "scrape_configs": [
                {
                    "job_name": job,
                    "metrics_path": "/metrics",
                    "scrape_timeout": interval,
                    "static_configs": [{"targets": addresses}],
                }
                for job, addresses in self.targets.items()
            ],
        }

    def start(self) -> None:
        """Installs if needed, writes the config and starts; returns once the API answers."""
        self.install = install_prometheus()
        binary = find_binary("prometheus")
        if binary is None:
            raise RuntimeError("prometheus missing after installing the package")
        self._dir = tempfile.TemporaryDirectory(prefix="mbl-prometheus-")
        root = Path(self._dir.name)
        config = root / "prometheus.yml"
        config.write_text(json.dumps(self.config(), indent=2))  # JSON is YAML
        self.port = free_port()
        self._proc = ManagedProcess(
            "prometheus",
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={root / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1h",
                "--log.level=warn",
            ],
            root / "prometheus.log",
        )
        self._proc.start()
        wait_until_ready(self._proc, self._ready, 30.0, "prometheus API")

    def stop(self) -> None:
        """Stops the server and removes its temp dir."""
        if self._proc is not None:
            self._proc.stop()
            self._proc = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> LocalPrometheus:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _ready(self) -> bool:
        with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as answer:  # noqa: S310
            return bool(answer.status == 200)

    def query(self, promql: str) -> list[dict[str, Any]]:
        """Runs an instant query; returns the result vector (each {"metric", "value"})."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310
            body = json.load(answer)
        if body.get("status") != "success":
            raise RuntimeError(f"query {promql!r} failed: {body}")
        result = body["data"]["result"]
        return list(result) if isinstance(result, list) else []

    def wait_for(self, promql: str, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Polls the query until it returns a non-empty vector; raises with the last answer."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(promql)
            if result:
                return result
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no result for {promql!r} within {timeout:.0f} s")
            time.sleep(0.5)
