"""The compose file runs the whole system with podman-compose, and `down -v` leaves nothing.

deploy/compose/compose.yaml plus compose.local.yaml (the images built here: Kafka from the
cached jars, FerretDB from its cached build, the services' image), brought up under a random
project name with freshly generated keys; a mailbox on the local stack's Dovecot is linked
through link-api and reaches `linked`.

One more override, written here, lets the containers reach the test's mail servers: the
stack's Dovecot and DNS listen on the host's 127.0.0.1 and its certificate names `localhost`,
so link-api (DNS for detection) and imap-verifier (IMAP and SMTP logins) run in the host's
network, reaching Kafka, MongoDB and the registry through ports published on 127.0.0.1.
Kafka, MongoDB, the registry, the broker and the topics step stay on the compose network and
find each other by service name, as an operator's compose runs.
"""

import asyncio
import json
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from pydantic_settings import BaseSettings

from localinfra.app_image import APP_IMAGE, build_app_image
from localinfra.compose_images import build_ferretdb_image, build_kafka_image
from localinfra.containers import install_podman, podman, podman_env
from localinfra.services import LINUX_EPHEMERAL_PORTS
from localinfra.stack import Endpoints
from mailbox_link_shared.crypto import generate_key
from mailbox_link_shared.network_policy import DEFAULT_MAIL_PORTS

from .conftest import imap_body, link_and_wait, unique_user_id

COMPOSE_DIR = Path(__file__).resolve().parents[2] / "deploy" / "compose"
READY_SECONDS = 300.0
LINK_SECONDS = 120.0

# Written into the test's directory and given after compose.yaml and compose.local.yaml.
HOST_MAIL_OVERRIDE = """\
services:
  kafka:
    environment:
      KAFKA_LISTENERS: PLAINTEXT://:9092,CONTROLLER://:9093,HOST://:9094
      KAFKA_ADVERTISED_LISTENERS: PLAINTEXT://kafka:9092,HOST://127.0.0.1:{kafka_port}
      KAFKA_LISTENER_SECURITY_PROTOCOL_MAP: PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,HOST:PLAINTEXT
    ports:
      - 127.0.0.1:{kafka_port}:9094
  mongo:
    ports:
      - 127.0.0.1:{mongo_port}:27017
  registry:
    ports:
      - 127.0.0.1:{registry_port}:8081
  link-api:
    network_mode: host
    ports: !reset []
    environment:
      MBL_HTTP_HOST: 127.0.0.1
      MBL_HTTP_PORT: "{api_port}"
      MBL_KAFKA_BOOTSTRAP_SERVERS: 127.0.0.1:{kafka_port}
      MBL_MONGODB_URI: mongodb://127.0.0.1:{mongo_port}/
      MBL_REGISTRY_URL: http://127.0.0.1:{registry_port}
      MBL_DNS_SERVERS: '{dns_servers}'
  imap-verifier:
    network_mode: host
    volumes:
      - {ca_file}:/run/mailbox-link/ca.pem:ro
    environment:
      MBL_HTTP_HOST: 127.0.0.1
      MBL_HTTP_PORT: "{verifier_port}"
      MBL_KAFKA_BOOTSTRAP_SERVERS: 127.0.0.1:{kafka_port}
      MBL_MONGODB_URI: mongodb://127.0.0.1:{mongo_port}/
      MBL_VERIFIER_CA_FILE: /run/mailbox-link/ca.pem
      MBL_OWNERSHIP_RELAY_HOST: 127.0.0.1
      MBL_OWNERSHIP_RELAY_PORT: "{relay_port}"
"""


@dataclass
class ComposeProject:
    """One podman-compose project of the three files, under a name of its own."""

    name: str
    files: list[Path]
    env_file: Path
    api_port: int
    broker_port: int
    product_token: str
    timings: dict[str, float] = field(default_factory=dict)

    def compose(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        command = [_podman_compose(), "-p", self.name]
        for file in self.files:
            command += ["-f", str(file)]
        command += ["--env-file", str(self.env_file), *args]
        # Variables of the test's own environment would override the env file's.
        env = {k: v for k, v in podman_env().items() if not k.startswith("MBL_")}
        return subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )

    def leftovers(self) -> dict[str, list[str]]:
        """What podman still holds of this project: containers, pods, networks, volumes."""
        label = f"label=io.podman.compose.project={self.name}"
        listings = {
            "containers": podman("ps", "-a", "--filter", label, "--format", "{{.Names}}"),
            "pods": podman("pod", "ls", "--format", "{{.Name}}"),
            "networks": podman("network", "ls", "--format", "{{.Name}}"),
            "volumes": podman("volume", "ls", "--format", "{{.Name}}"),
        }
        return {
            kind: [
                line for line in found.stdout.split() if kind == "containers" or self.name in line
            ]
            for kind, found in listings.items()
        }

    def logs(self) -> str:
        """The last lines of each of the project's containers, for a failure's message."""
        names = self.leftovers()["containers"]
        label = f"label=io.podman.compose.project={self.name}"
        status = podman(
            "ps", "-a", "--filter", label, "--format", "{{.Names}} {{.Status}}", check=False
        ).stdout
        tails = [status]
        for name in names:
            found = podman("logs", "--tail", "25", name, check=False)
            tails.append(f"--- {name}\n{found.stdout[-3000:]}{found.stderr[-3000:]}")
        return "\n".join(tails)

    def force_remove(self) -> None:
        """Removes whatever is left of this project (and only of it), after a failed down."""
        found = self.leftovers()
        for name in found["containers"]:
            podman("rm", "-f", "-t", "5", name, check=False)
        for name in found["pods"]:
            podman("pod", "rm", "-f", name, check=False)
        for name in found["volumes"]:
            podman("volume", "rm", "-f", name, check=False)
        for name in found["networks"]:
            podman("network", "rm", "-f", name, check=False)


def _podman_compose() -> str:
    # The workspace's dev dependency, next to this interpreter; else one on PATH.
    local = Path(sys.executable).parent / "podman-compose"
    found = str(local) if local.exists() else shutil.which("podman-compose")
    if found is None:
        raise AssertionError(
            "podman-compose is missing: it is a dev dependency (python3.11 -m uv sync)"
        )
    return found


def _secrets_env(path: Path, registry_token: str, product_token: str) -> None:
    """The operator's env file, as mailbox-link.env.example asks, with fresh keys."""
    keys = {
        "product": product_token,
        "link-api": registry_token,
        "sign-in": secrets.token_urlsafe(32),
        "operator": secrets.token_urlsafe(32),
    }
    scopes = {
        "product": ["links", "sign_in_confirm"],
        "link-api": ["registry"],
        "sign-in": ["owner_lookup"],
        "operator": ["operator"],
    }
    lines = {
        "MBL_ENCRYPTION_KEYS": json.dumps({"k1": generate_key()}),
        "MBL_ENCRYPTION_KEY_ID": "k1",
        "MBL_SERVICE_KEYS": json.dumps(keys),
        "MBL_SERVICE_KEY_SCOPES": json.dumps(scopes),
        "MBL_REGISTRY_TOKEN": registry_token,
        # The stack's Dovecot is on loopback, on ports from Linux's ephemeral range.
        "MBL_VERIFIER_ALLOWED_NETWORKS": json.dumps(["127.0.0.0/8"]),
        "MBL_VERIFIER_ALLOWED_PORTS": json.dumps([*DEFAULT_MAIL_PORTS, LINUX_EPHEMERAL_PORTS]),
    }
    path.write_text("".join(f"{key}='{value}'\n" for key, value in lines.items()))
    path.chmod(0o600)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - our loopback
            return bool(response.status == 200)
    except OSError:
        return False


@pytest.fixture(scope="module")
def images() -> dict[str, float]:
    """The three local images (each cached); seconds each took."""
    install_podman()
    started = time.monotonic()
    kafka = build_kafka_image()
    ferretdb = build_ferretdb_image()
    app = build_app_image()
    return {
        "kafka": kafka.seconds,
        "ferretdb": ferretdb.seconds,
        "app": app.build_seconds,
        "all": time.monotonic() - started,
    }


def listen_port() -> int:
    """A free port below Linux's ephemeral range: the containers bind it a minute or more after
    it is chosen, and a port of that range may meanwhile become some outgoing connection's
    local port (seen under load: link-api's bind failed with "address already in use")."""
    for _ in range(200):
        port = secrets.randbelow(32768 - 20000) + 20000
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        if port not in _LISTEN_PORTS:
            _LISTEN_PORTS.add(port)
            return port
    raise RuntimeError("no free port between 20000 and 32767")


_LISTEN_PORTS: set[int] = set()


@pytest.fixture
def project(images: dict[str, float], infra: Endpoints, tmp_path: Path) -> Iterator[ComposeProject]:
    """A compose project brought up with fresh keys; forcibly removed if the test's own
    `down` did not leave it clean."""
    name = f"i15comp-{secrets.token_hex(3)}"
    ports = {
        key: listen_port()
        for key in ("api_port", "broker_port", "registry_port", "kafka_port", "mongo_port",
                    "verifier_port")
    }  # fmt: skip
    secrets_file = tmp_path / "mailbox-link.env"
    product_token = secrets.token_urlsafe(32)
    _secrets_env(secrets_file, secrets.token_urlsafe(32), product_token)
    # The stack's CA, readable by the services' uid inside the container.
    ca_file = tmp_path / "ca.pem"
    shutil.copyfile(infra.ca_file, ca_file)
    ca_file.chmod(0o644)
    override = tmp_path / "compose.hostmail.yaml"
    override.write_text(
        HOST_MAIL_OVERRIDE.format(
            **ports,
            relay_port=infra.relay_port,
            dns_servers=json.dumps([infra.dns_server]),
            ca_file=ca_file,
        )
    )
    variables = tmp_path / "compose.env"
    variables.write_text(
        f"MBL_ENV_FILE={secrets_file}\n"
        f"MBL_IMAGE={APP_IMAGE}\n"
        f"MBL_NAMESPACE={name}\n"
        f"MBL_API_PORT={ports['api_port']}\n"
        f"MBL_BROKER_PORT={ports['broker_port']}\n"
        f"MBL_OAUTH_REDIRECT_URI=http://127.0.0.1:{ports['broker_port']}/v1/oauth/callback\n"
    )
    compose = ComposeProject(
        name=name,
        files=[COMPOSE_DIR / "compose.yaml", COMPOSE_DIR / "compose.local.yaml", override],
        env_file=variables,
        api_port=ports["api_port"],
        broker_port=ports["broker_port"],
        product_token=product_token,
    )
    try:
        yield compose
    finally:
        if any(compose.leftovers().values()):
            compose.compose("down", "-v", "-t", "10")
            compose.force_remove()


def _up_and_wait(project: ComposeProject) -> None:
    started = time.monotonic()
    up = project.compose("up", "-d")
    assert up.returncode == 0, f"podman-compose up failed:\n{up.stdout[-3000:]}{up.stderr[-3000:]}"
    project.timings["up command"] = time.monotonic() - started
    urls = [
        f"http://127.0.0.1:{project.api_port}/readyz",
        f"http://127.0.0.1:{project.broker_port}/readyz",  # published on the compose network
    ]
    deadline = started + READY_SECONDS
    while not all(_answers(url) for url in urls):
        if time.monotonic() > deadline:
            raise AssertionError(f"not ready after {READY_SECONDS:.0f} s: {urls}\n{project.logs()}")
        time.sleep(1)
    project.timings["up to ready"] = time.monotonic() - started


@pytest.mark.connected
@pytest.mark.timeout(1500)
async def test_compose_runs_the_system_a_link_reaches_linked_and_down_leaves_nothing(
    project: ComposeProject, images: dict[str, float], new_mail_user: Any, infra: Endpoints
) -> None:
    await asyncio.to_thread(_up_and_wait, project)
    user = new_mail_user("compose")
    headers = {"Authorization": f"Bearer {project.product_token}"}
    api_url = f"http://127.0.0.1:{project.api_port}"
    async with httpx.AsyncClient(base_url=api_url, headers=headers, timeout=10) as api:
        try:
            link = await asyncio.wait_for(
                link_and_wait(api, "acme", unique_user_id(), imap_body(infra, user)),
                LINK_SECONDS,
            )
        except (AssertionError, TimeoutError) as exc:
            logs = await asyncio.to_thread(project.logs)
            raise AssertionError(f"{exc}\n{logs}") from exc
    assert link["status"] == "linked", f"{link}\n{await asyncio.to_thread(project.logs)}"
    assert link["mailbox_id"]
    # The topics step found Kafka by its service name and created or checked every topic.
    topics = await asyncio.to_thread(
        podman, "inspect", "--format", "{{.State.ExitCode}}", f"{project.name}_topics_1"
    )
    assert topics.stdout.strip() == "0", await asyncio.to_thread(project.logs)

    started = time.monotonic()
    down = await asyncio.to_thread(project.compose, "down", "-v", "-t", "30")
    project.timings["down"] = time.monotonic() - started
    assert down.returncode == 0, f"podman-compose down failed:\n{down.stderr[-3000:]}"
    left = await asyncio.to_thread(project.leftovers)
    assert left == {"containers": [], "pods": [], "networks": [], "volumes": []}
    print(f"\ncompose timings (s): {project.timings}; images (s): {images}")


APP_SERVICES = ("topics", "registry", "imap-verifier", "oauth-broker", "link-api")
# Only the env file may hold these; compose.yaml names none of them.
SECRET_SETTINGS = ("MBL_ENCRYPTION_KEYS", "MBL_SERVICE_KEYS", "MBL_REGISTRY_TOKEN")


class _ComposeLoader(yaml.SafeLoader):
    """Reads compose's merge tags (!override, !reset) as the plain values they carry."""


def _tagged(loader: yaml.SafeLoader, _suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node)
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node)
    return loader.construct_scalar(node)  # type: ignore[arg-type]


_ComposeLoader.add_multi_constructor("!", _tagged)


def _compose_file(name: str) -> dict[str, Any]:
    text = (COMPOSE_DIR / name).read_text()
    loaded: dict[str, Any] = yaml.load(text, Loader=_ComposeLoader)  # noqa: S506 - SafeLoader's
    return loaded


def _settings_fields() -> set[str]:
    """Every variable some service (or the topics step) reads: MBL_ ones and OTEL_ ones."""
    from imap_verifier.config import Settings as VerifierSettings
    from link_api.config import Settings as ApiSettings
    from mailbox_link_shared.settings import KafkaSettings, environment_variables
    from oauth_broker.config import Settings as BrokerSettings
    from registry.config import Settings as RegistrySettings

    classes: list[type[BaseSettings]] = [
        ApiSettings, RegistrySettings, VerifierSettings, BrokerSettings, KafkaSettings
    ]  # fmt: skip
    return environment_variables(*classes)


def test_compose_files_and_env_example_name_only_real_settings() -> None:
    known = _settings_fields()
    ours = ("MBL_", "OTEL_")
    named: set[str] = set()
    for file in ("compose.yaml", "compose.local.yaml"):
        services = _compose_file(file)["services"]
        for service in services.values():
            named |= {key for key in service.get("environment") or {} if key.startswith(ours)}
    example = (COMPOSE_DIR / "mailbox-link.env.example").read_text().splitlines()
    for line in example:
        assignment = line.removeprefix("# ").split("=", 1)[0]
        if assignment.startswith(ours) and "=" in line and " " not in assignment:
            named.add(assignment)
    # MBL_OAUTH_GOOGLE__CLIENT_ID is the field oauth_google's client_id (nested settings).
    unknown = sorted(name for name in named if name.split("__")[0] not in known)
    assert len(named) > 15
    assert {"MBL_LOG_FORMAT", "OTEL_EXPORTER_OTLP_ENDPOINT"} <= named
    assert unknown == []
    assert "MBL_OTEL_EXPORTER_OTLP_ENDPOINT" not in known  # tracing reads the standard name


def test_compose_services_are_hardened_and_keep_secrets_in_the_env_file() -> None:
    compose = _compose_file("compose.yaml")
    for name in APP_SERVICES:
        service = compose["services"][name]
        assert service["user"] == "10001:10001", name
        assert service["read_only"] is True, name
        assert service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name
        assert service["tmpfs"] == ["/tmp:size=64m,mode=1777"], name
        assert service["deploy"]["resources"]["limits"]["memory"], name
        assert service["env_file"] == ["${MBL_ENV_FILE:-mailbox-link.env}"], name
        assert not set(SECRET_SETTINGS) & set(service["environment"]), name
        if name != "topics":
            assert service["restart"] == "unless-stopped", name
            assert "/readyz" in " ".join(service["healthcheck"]["test"]), name
            assert service["depends_on"]["topics"] == {
                "condition": "service_completed_successfully"
            }, name
    published = {name: service.get("ports", []) for name, service in compose["services"].items()}
    # Only link-api and the OAuth callback are reachable from outside the compose network.
    assert {name for name, ports in published.items() if ports} == {"link-api", "oauth-broker"}
    assert compose["services"]["kafka"]["image"].startswith(
        "${MBL_KAFKA_IMAGE:-docker.io/apache/kafka:"
    )
