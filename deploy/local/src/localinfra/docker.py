"""Docker path: Kafka and MongoDB from testcontainers when a Docker engine answers.

Kept deliberately small. It cannot be exercised on the development machines (no Docker
engine there), so it is untested; the local-process path is the one CI runs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import threading
from typing import Any


def docker_available() -> bool:
    """True when ``docker info`` succeeds quickly; ``MBL_DOCKER=0|1`` overrides the probe."""
    forced = os.environ.get("MBL_DOCKER")
    if forced in {"0", "1"}:
        return forced == "1"
    if shutil.which("docker") is None:
        return False
    try:
        probe = subprocess.run(["docker", "info"], capture_output=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


class DockerServers:
    """Starts/stops the containers; each ``start_*`` may run in its own thread."""

    def __init__(self) -> None:
        self._containers: list[Any] = []
        self._lock = threading.Lock()

    def start_kafka(self) -> str:
        """Start a KRaft Kafka container; return its bootstrap address."""
        try:
            from testcontainers.community.kafka import KafkaContainer
        except ImportError:  # testcontainers < 4.14 layout
            from testcontainers.kafka import KafkaContainer
        container = KafkaContainer().with_kraft()
        self._track(container)
        container.start()
        return str(container.get_bootstrap_server())

    def start_mongo(self) -> str:
        """Start a MongoDB container; return its connection URI."""
        try:
            from testcontainers.community.mongodb import MongoDbContainer
        except ImportError:
            from testcontainers.mongodb import MongoDbContainer
        container = MongoDbContainer()
        self._track(container)
        container.start()
        return str(container.get_connection_url())

    def _track(self, container: Any) -> None:
        with self._lock:
            self._containers.append(container)

    def stop(self) -> None:
        """Stop every container started. Idempotent."""
        with self._lock:
            containers, self._containers = self._containers, []
        for container in containers:
            # Best effort during teardown: one failing stop must not keep the others running.
            with contextlib.suppress(Exception):
                container.stop()
