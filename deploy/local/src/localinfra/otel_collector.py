"""Builds, caches and runs a small OpenTelemetry collector that writes received spans to a file.

No collector release can be downloaded here, so the official builder (``go install
go.opentelemetry.io/collector/cmd/builder``) builds one from a manifest with only the OTLP
receiver and the file exporter (about 2 minutes the first time). The binary lands in
``cache_dir()/otelcol-<version>/otelcol-mbl``; a second call only checks that it is there.

``running_collector()`` starts it on a free port (OTLP over HTTP) writing every received
batch as one JSON line (OTLP/JSON) to a file in a temporary directory, for tests to read.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localinfra.cache import InstallResult, cache_dir
from localinfra.go_build import cached_go_build, run
from localinfra.ports import free_port, port_is_open
from localinfra.procs import ManagedProcess, wait_until_ready

COLLECTOR_VERSION = "0.165.0"
BINARY_NAME = "otelcol-mbl"
READY_TIMEOUT = 30.0


def collector_home() -> Path:
    """Where this version's builder and collector are cached."""
    return cache_dir() / f"otelcol-{COLLECTOR_VERSION}"


def collector_bin() -> Path:
    """The cached collector binary."""
    return collector_home() / "dist" / BINARY_NAME


def builder_manifest(output_path: Path) -> str:
    """The builder's manifest: the OTLP receiver and the file exporter, nothing else."""
    v = COLLECTOR_VERSION
    contrib = "github.com/open-telemetry/opentelemetry-collector-contrib"
    return (
        "dist:\n"
        f"  name: {BINARY_NAME}\n"
        "  description: mailbox-link test collector (OTLP in, JSON lines out)\n"
        f"  output_path: {output_path}\n"
        "receivers:\n"
        f"  - gomod: go.opentelemetry.io/collector/receiver/otlpreceiver v{v}\n"
        "exporters:\n"
        f"  - gomod: {contrib}/exporter/fileexporter v{v}\n"
    )


def install_collector() -> InstallResult:
    """Builds the collector unless it is cached; raises with the build's output if it fails."""
    return cached_go_build(
        "otel collector",
        collector_home(),
        collector_bin().exists,
        _build_collector,
        "the OpenTelemetry collector for the tracing tests is built from source with the "
        "official builder and needs Go",
    )


def _build_collector(go: str) -> str:
    home = collector_home()
    home.mkdir(parents=True, exist_ok=True)
    builder = home / "bin" / "builder"
    if not builder.exists():
        run(
            [go, "install", f"go.opentelemetry.io/collector/cmd/builder@v{COLLECTOR_VERSION}"],
            env={"GOBIN": str(home / "bin")},
        )
    manifest = home / "manifest.yaml"
    manifest.write_text(builder_manifest(home / "dist"))
    run([str(builder), f"--config={manifest}"], cwd=home)
    if not collector_bin().exists():
        raise RuntimeError(f"the builder ran but {collector_bin()} is missing")
    return "built"


def collector_config(port: int, output: Path) -> str:
    """Collector configuration: OTLP/HTTP on 127.0.0.1:port, spans to `output` as JSON lines;
    its own telemetry off, so no second port (8888) is taken."""
    return json.dumps(
        {
            "receivers": {"otlp": {"protocols": {"http": {"endpoint": f"127.0.0.1:{port}"}}}},
            # Without a flush interval the exporter holds its buffer until it fills.
            "exporters": {
                "file": {"path": str(output), "format": "json", "flush_interval": "200ms"}
            },
            "service": {
                "pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["file"]}},
                "telemetry": {"metrics": {"level": "none"}, "logs": {"level": "warn"}},
            },
        },
        indent=2,
    )


@dataclass
class RunningCollector:
    """A collector listening for OTLP over HTTP and the file it writes spans to."""

    endpoint: str  # http://127.0.0.1:<port>, the value of OTEL_EXPORTER_OTLP_ENDPOINT
    output: Path
    process: ManagedProcess

    def stop(self) -> None:
        """Stops the collector (idempotent); its file exporter writes out what it holds, which
        it may otherwise keep buffered for a long while, so read `spans` after this."""
        self.process.stop()

    def spans(self) -> list[dict[str, Any]]:
        """Every span received so far, each with `service.name` of its resource added as
        `_service`. A line the collector is still writing is left for the next call."""
        found: list[dict[str, Any]] = []
        if not self.output.exists():
            return found
        for line in self.output.read_text().splitlines():
            try:
                batch = json.loads(line)
            except json.JSONDecodeError:
                continue
            for resource_spans in batch.get("resourceSpans", []):
                resource = resource_spans.get("resource", {}).get("attributes", [])
                service = attribute_values(resource).get("service.name")
                for scope_spans in resource_spans.get("scopeSpans", []):
                    for span in scope_spans.get("spans", []):
                        found.append({**span, "_service": service})
        return found


def attribute_values(attributes: list[dict[str, Any]]) -> dict[str, Any]:
    """OTLP/JSON attributes ([{key, value: {stringValue: ...}}]) as a plain dict."""
    values: dict[str, Any] = {}
    for attribute in attributes:
        value = attribute.get("value", {})
        values[attribute["key"]] = next(iter(value.values()), None) if value else None
    return values


@contextlib.contextmanager
def running_collector() -> Iterator[RunningCollector]:
    """Builds the collector if needed, runs it on a free port, and stops it on exit."""
    install_collector()
    with tempfile.TemporaryDirectory(prefix="mbl-otelcol-") as tmp:
        workdir = Path(tmp)
        port = free_port()
        output = workdir / "spans.jsonl"
        config = workdir / "config.json"
        # JSON is YAML: the collector reads it as its configuration file.
        config.write_text(collector_config(port, output))
        process = ManagedProcess(
            "otelcol",
            [str(collector_bin()), f"--config=file:{config}"],
            workdir / "otelcol.log",
        )
        process.start()
        try:
            wait_until_ready(
                process, lambda: port_is_open("127.0.0.1", port), READY_TIMEOUT, "OTLP receiver"
            )
            yield RunningCollector(f"http://127.0.0.1:{port}", output, process)
        finally:
            process.stop()
