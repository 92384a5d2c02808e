"""Apache Kafka as a single local KRaft node, installed from Maven Central into the cache.

No Kafka distribution tarball is needed: Maven resolves the broker jar and its runtime
dependencies, and the broker runs from that class path.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import shutil
import subprocess
import time
import uuid
from pathlib import Path

from localinfra.cache import InstallResult, cache_dir, install_lock
from localinfra.ports import free_port, port_is_open
from localinfra.procs import ManagedProcess, ServerFailedError, wait_until_ready

# Newest 4.x on Maven Central when written; its broker jars target Java 17 (class file 61).
KAFKA_VERSION = "4.4.0"
# Kafka logs through slf4j 1.7; without a binding it prints nothing at all. log4j-core comes
# with Kafka, so the matching slf4j-1.x bridge is the only extra jar.
LOG4J_VERSION = "2.25.5"
_MARKER = ".complete"

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.mailbox-link</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>{kafka}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>{log4j}</version>
    </dependency>
  </dependencies>
</project>
"""

# Everything goes to stdout, which is the broker's log file: never the test console.
_LOG4J2 = """status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = OUT
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
"""


def kafka_home() -> Path:
    """Cache directory of this Kafka version (``libs/`` holds the class path)."""
    return cache_dir() / f"kafka-{KAFKA_VERSION}"


def install_kafka() -> InstallResult:
    """Resolve the broker and its dependencies with Maven once; later calls are no-ops."""
    started = time.monotonic()
    home = kafka_home()
    with install_lock(f"kafka-{KAFKA_VERSION}"):
        if (home / _MARKER).exists():
            return InstallResult("kafka", str(home), "already installed", 0.0)
        for tool in ("java", "mvn"):
            if shutil.which(tool) is None:
                raise RuntimeError(
                    f"'{tool}' not found: Kafka needs Java 17+ and Maven "
                    "(Debian: apt-get install openjdk-17-jre-headless maven)"
                )
        home.mkdir(parents=True, exist_ok=True)
        (home / "pom.xml").write_text(_POM.format(kafka=KAFKA_VERSION, log4j=LOG4J_VERSION))
        staging = home / "libs.partial"
        shutil.rmtree(staging, ignore_errors=True)
        result = subprocess.run(
            [
                "mvn", "-q", "-B", "-Dstyle.color=never", "-f", str(home / "pom.xml"),
                "dependency:copy-dependencies", "-DincludeScope=runtime",
                f"-DoutputDirectory={staging}",
            ],
            capture_output=True,
            text=True,
            check=False,
        )  # fmt: skip
        if result.returncode != 0 or not any(staging.glob(f"kafka_2.13-{KAFKA_VERSION}.jar")):
            raise RuntimeError(
                f"Maven could not fetch Kafka {KAFKA_VERSION}:\n"
                f"{(result.stdout + result.stderr)[-3000:]}"
            )
        # Swap in the complete directory, then mark: an interrupted install is redone.
        shutil.rmtree(home / "libs", ignore_errors=True)
        staging.rename(home / "libs")
        (home / _MARKER).write_text(KAFKA_VERSION + "\n")
    return InstallResult("kafka", str(home), "installed", time.monotonic() - started)


def _cluster_id() -> str:
    # Kafka cluster ids are 16 random bytes, URL-safe base64 without padding (22 chars).
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()


class KafkaServer:
    """One combined broker+controller KRaft node on 127.0.0.1 with a PLAINTEXT listener.

    Topic auto-creation is ON by default so producers behave like the testcontainers image
    (the Docker path); services still create their own topics explicitly.
    """

    def __init__(
        self, workdir: Path, *, heap_mb: int = 512, auto_create_topics: bool = True
    ) -> None:
        self.workdir = workdir
        self.heap_mb = heap_mb
        self.auto_create_topics = auto_create_topics
        self.port = 0
        self.controller_port = 0
        self._proc: ManagedProcess | None = None

    @property
    def bootstrap(self) -> str:
        """``host:port`` for clients."""
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> str:
        """Format storage, start the broker and wait for a real metadata answer."""
        install_kafka()
        # Two attempts: a free port can be taken by someone else before the JVM binds it.
        for attempt in (1, 2):
            try:
                return self._start_once(timeout)
            except ServerFailedError as exc:
                self.stop()
                if attempt == 2 or "Address already in use" not in str(exc):
                    raise
        raise AssertionError("unreachable")

    def restart(self, timeout: float = 60.0) -> str:
        """Starts the stopped broker again on its data and its ports (clients reconnect by
        themselves): an outage's end. Its log directory is never formatted again."""
        if not self.port:
            raise RuntimeError("restart needs a broker this object started")
        if self._proc is not None and self._proc.is_alive():
            return self.bootstrap
        return self._start_once(timeout, restart=True)

    def _start_once(self, timeout: float, restart: bool = False) -> str:
        self.workdir.mkdir(parents=True, exist_ok=True)
        data = self.workdir / "data"
        if not restart:
            self.port, self.controller_port = free_port(), free_port()
            shutil.rmtree(data, ignore_errors=True)
        props = self.workdir / "server.properties"
        props.write_text(self._properties(data))
        log_config = self.workdir / "log4j2.properties"
        log_config.write_text(_LOG4J2)
        classpath = str(kafka_home() / "libs" / "*")
        java_opts = [
            f"-Dlog4j2.configurationFile={log_config}",
            "-Djava.awt.headless=true",
            "-XX:-UsePerfData",  # no hsperfdata files left in /tmp
        ]
        log_file = self.workdir / "kafka.log"
        # Formatted only when new: formatting again would lose every topic and offset.
        if not (data / "meta.properties").exists():
            fmt = subprocess.run(
                [
                    "java", *java_opts, "-cp", classpath, "kafka.tools.StorageTool", "format",
                    # "=": a random id may start with "-", which would read as an option.
                    "--standalone", f"--cluster-id={_cluster_id()}", "-c", str(props),
                ],
                capture_output=True,
                text=True,
                check=False,
            )  # fmt: skip
            # Its own log: the format tool dumps ~200 config lines that would bury broker errors.
            (self.workdir / "format.log").write_text(fmt.stdout + fmt.stderr)
            if fmt.returncode != 0:
                output = fmt.stdout + fmt.stderr
                raise ServerFailedError(f"kafka storage format failed:\n{output[-2000:]}")
        self._proc = ManagedProcess(
            "kafka",
            [
                "java", f"-Xmx{self.heap_mb}m", f"-Xms{min(256, self.heap_mb)}m",
                "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-XX:+ExitOnOutOfMemoryError",
                *java_opts, "-cp", classpath, "kafka.Kafka", str(props),
            ],
            log_file,
            cwd=self.workdir,
        )  # fmt: skip
        self._proc.start()
        proc = self._proc
        # Cheap port poll first, so the metadata client does not log connection errors.
        wait_until_ready(proc, lambda: port_is_open("127.0.0.1", self.port), timeout, "listener")
        wait_until_ready(
            proc, lambda: metadata_ok(self.bootstrap), timeout, "metadata", interval=0.2
        )
        return self.bootstrap

    def _properties(self, data: Path) -> str:
        settings = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "listeners": (
                f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}"
            ),
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "controller.quorum.bootstrap.servers": f"127.0.0.1:{self.controller_port}",
            "log.dirs": str(data),
            "num.partitions": "3",
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            "auto.create.topics.enable": "true" if self.auto_create_topics else "false",
            # A single node can only hold one replica of each internal topic.
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            # One partition per internal topic: creating 50 offsets partitions on the first
            # consumer group join would cost a second in every fresh test run.
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.num.partitions": "1",
            "share.coordinator.state.topic.num.partitions": "1",
            # Tests join groups constantly; the default 3 s delay would slow every one.
            "group.initial.rebalance.delay.ms": "0",
            # Small thread pools for 2-core machines.
            "num.network.threads": "2",
            "num.io.threads": "2",
            "num.recovery.threads.per.data.dir": "1",
        }
        return "".join(f"{key}={value}\n" for key, value in settings.items())

    def stop(self) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after 10 s). Idempotent."""
        if self._proc is not None:
            self._proc.stop(timeout=10.0)


def metadata_ok(bootstrap: str) -> bool:
    """True when the broker answers a DescribeCluster request listing at least one broker."""
    # asyncio.run needs a thread without a running loop; the caller may be inside one.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, _describe_cluster(bootstrap)).result(timeout=15)


async def _describe_cluster(bootstrap: str) -> bool:
    from aiokafka.admin import AIOKafkaAdminClient  # imported late: only the health check needs it

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    await admin.start()
    try:
        cluster = await admin.describe_cluster()
    finally:
        await admin.close()
    return bool(cluster.get("brokers"))
