"""Starts a KRaft Kafka node configured like the public apache/kafka image.

Every KAFKA_* variable (but the JVM options) becomes a broker property: KAFKA_NODE_ID is
node.id, "__" stands for "_" and "___" for "-" (apache/kafka's rule). CLUSTER_ID formats the
log directory on the first start; a formatted directory is kept.
"""

import os
import shlex
import subprocess
import sys

CLASSPATH = "/opt/kafka/libs/*"
# /tmp: the root filesystem may be read-only, and the container has /tmp to itself.
CONFIG = "/tmp/kafka-server.properties"  # noqa: S108
# Variables read by Kafka's own scripts, not broker properties.
NOT_PROPERTIES = {
    "KAFKA_HEAP_OPTS", "KAFKA_JVM_PERFORMANCE_OPTS", "KAFKA_OPTS", "KAFKA_LOG4J_OPTS",
    "KAFKA_JMX_OPTS", "KAFKA_GC_LOG_OPTS", "KAFKA_VERSION", "KAFKA_LOG4J_ROOT_LOGLEVEL",
    "KAFKA_LOG4J_LOGGERS", "KAFKA_TOOLS_LOG4J_LOGLEVEL",
}  # fmt: skip


def property_name(variable: str) -> str:
    """KAFKA_LOG_DIRS -> log.dirs, KAFKA_A___B -> a-b, KAFKA_A__B -> a_b."""
    name = variable.removeprefix("KAFKA_").lower()
    return name.replace("___", "-").replace("__", "\0").replace("_", ".").replace("\0", "_")


def properties(environ: dict[str, str]) -> dict[str, str]:
    return {
        property_name(key): value
        for key, value in sorted(environ.items())
        if key.startswith("KAFKA_") and key not in NOT_PROPERTIES
    }


def main() -> None:
    settings = properties(dict(os.environ))
    with open(CONFIG, "w") as config:
        config.writelines(f"{key}={value}\n" for key, value in settings.items())
    jvm = [
        "java",
        "-Dlog4j2.configurationFile=/opt/kafka/config/log4j2.properties",
        "-Djava.awt.headless=true",
        "-XX:-UsePerfData",
        *shlex.split(os.environ.get("KAFKA_OPTS", "")),
        "-cp",
        CLASSPATH,
    ]
    cluster_id = os.environ.get("CLUSTER_ID", "")
    if not cluster_id:
        sys.exit("set CLUSTER_ID (22 characters, e.g. from kafka-storage random-uuid)")
    voters = [] if "controller.quorum.voters" in settings else ["--standalone"]
    subprocess.run(
        [*jvm, "kafka.tools.StorageTool", "format", "--ignore-formatted",
         f"--cluster-id={cluster_id}", *voters, "-c", CONFIG],
        check=True,
        stdout=subprocess.DEVNULL,  # two hundred lines of config, printed on every start
    )  # fmt: skip
    heap = shlex.split(os.environ.get("KAFKA_HEAP_OPTS", "-Xmx512m"))
    tuning = shlex.split(
        os.environ.get(
            "KAFKA_JVM_PERFORMANCE_OPTS",
            "-XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExitOnOutOfMemoryError",
        )
    )
    # exec: the JVM is PID 1's child no more, it is PID 1 and gets the stop signal itself.
    os.execvp("java", [jvm[0], *heap, *tuning, *jvm[1:], "kafka.Kafka", CONFIG])  # noqa: S606


if __name__ == "__main__":
    main()
