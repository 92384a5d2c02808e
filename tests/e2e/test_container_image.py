"""The services' container image (deploy/container/Containerfile), built and run for real.

Built on the debootstrap Debian base (localinfra.containers; no registry here), run by podman
with `--network host --read-only --tmpfs /tmp --user 10001` against the local stack, each
service configured exactly as `make run` configures its process (localinfra.services).
Every container is named `i15img-...` and removed when its test ends, passed or failed.
"""

import asyncio
import json
import secrets
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from imap_verifier.config import SERVICE_NAME as VERIFIER_GROUP_SUFFIX
from localinfra.app_image import APP_IMAGE, AppImageBuild, build_app_image
from localinfra.containers import podman
from localinfra.hostile_mail import HostileMailServers
from localinfra.ports import free_port
from localinfra.registry_driver import MailboxesTopic, registry_documents
from localinfra.services import ServiceConfig, _broker_environment, _environment
from localinfra.stack import Endpoints

from .conftest import imap_body, request_link, service_config, unique_user_id, wait_for_outcome
from .registry_checks import assert_registry_consistent

pytestmark = pytest.mark.connected

PREFIX = "i15img-"
SERVICE_USER = "10001"
# What `podman stop` waits before SIGKILL; Kubernetes' default grace is 30 s.
PODMAN_STOP_TIMEOUT = 10
READY_SECONDS = 60.0
BURST_LINKS = 20
# Packages that belong to development or to the local stack, never to the image.
NOT_IN_IMAGE = ("localinfra", "pytest", "mypy", "ruff", "testcontainers", "aiosmtpd", "flask")


@pytest.fixture(scope="session")
def app_image() -> AppImageBuild:
    """The image, built once per session from the debootstrap base (layers cached by podman)."""
    built = build_app_image()
    print(
        f"\n{built.tag}: build {built.build_seconds:.1f} s, base {built.base_action} "
        f"({built.base_seconds:.1f} s), size {built.size_bytes / 1e6:.0f} MB"
    )
    return built


@dataclass
class Containers:
    """Starts service containers from the image and removes every one it started."""

    workdir: Path
    names: list[str] = field(default_factory=list)
    start_seconds: dict[str, float] = field(default_factory=dict)

    def start(self, name: str, module: str, env: dict[str, str], port: int, ca_file: str) -> str:
        """Runs `python -m module` detached, as the services run in production: read-only
        root, writable /tmp only, uid 10001; waits until it is ready (/readyz) on `port`."""
        full = f"{PREFIX}{name}-{secrets.token_hex(3)}"
        env_file = self.workdir / f"{full}.env"
        # An env file, not -e: the test's keys stay out of the process list.
        env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
        env_file.chmod(0o600)
        started = time.monotonic()
        self.names.append(full)
        podman(
            "run", "-d", "--name", full, "--network", "host",
            "--read-only", "--tmpfs", "/tmp", "--user", SERVICE_USER,
            "--env-file", str(env_file), "-e", f"MBL_HTTP_PORT={port}",
            "-v", f"{ca_file}:{ca_file}:ro",
            APP_IMAGE, "python", "-m", module,
        )  # fmt: skip
        self._wait_ready(full, port)
        self.start_seconds[full] = time.monotonic() - started
        return full

    def _wait_ready(self, name: str, port: int) -> None:
        deadline = time.monotonic() + READY_SECONDS
        url = f"http://127.0.0.1:{port}/readyz"
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if 200 <= response.status < 300:
                        return
            except OSError:
                pass
            state = inspect_state(name)
            if not state["Running"]:
                raise AssertionError(f"{name} exited {state['ExitCode']}:\n{logs(name)}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{name} not ready after {READY_SECONDS} s:\n{logs(name)}")
            time.sleep(0.2)

    def remove_all(self) -> None:
        for name in self.names:
            podman("rm", "--force", "--time", "0", name, check=False)


@pytest.fixture
def containers(tmp_path: Path) -> Iterator[Containers]:
    started = Containers(tmp_path)
    try:
        yield started
    finally:
        started.remove_all()


def inspect_state(name: str) -> dict[str, Any]:
    state: dict[str, Any] = json.loads(
        podman("inspect", "--format", "{{json .State}}", name).stdout
    )
    return state


def logs(name: str) -> str:
    result = podman("logs", name, check=False)
    return (result.stdout + result.stderr)[-4000:]


def run_in_image(*command: str) -> str:
    """Runs a one-off command in the image as the services run; returns its output."""
    result = podman(
        "run", "--rm", "--read-only", "--tmpfs", "/tmp", "--user", SERVICE_USER,
        "--name", f"{PREFIX}probe-{secrets.token_hex(3)}", APP_IMAGE, *command,
    )  # fmt: skip
    return result.stdout


@dataclass(frozen=True)
class Deployment:
    """The four services' settings for one namespace, and the ports they listen on."""

    config: ServiceConfig
    env: dict[str, str]
    ports: dict[str, int]

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['link_api']}"


def deployment(infra: Endpoints, **extra_env: str) -> Deployment:
    """The environment localinfra.services gives the processes, for containers: only the MBL_*
    settings (nothing of this host's environment enters a container), listening on loopback."""
    config = service_config(infra, namespace=f"{PREFIX}{secrets.token_hex(3)}", extra_env=extra_env)
    ports = {m: free_port() for m in ("link_api", "registry", "imap_verifier", "oauth_broker")}
    internal_token = secrets.token_urlsafe(32)
    env = {
        **_environment(config, internal_token, registry_port=ports["registry"]),
        **_broker_environment(config, ports["oauth_broker"]),
        **config.rate_limits,
        **config.extra_env,
        # The image listens on every interface (a container's loopback is its own); with the
        # host's network the test keeps the services on loopback.
        "MBL_HTTP_HOST": "127.0.0.1",
        "MBL_OWNERSHIP_RELAY_HOST": "127.0.0.1",
        "MBL_OWNERSHIP_RELAY_PORT": str(config.ownership_relay_port),
    }
    return Deployment(config, {k: v for k, v in env.items() if k.startswith("MBL_")}, ports)


def start(containers: Containers, setup: Deployment, module: str, replica: int = 1) -> str:
    port = setup.ports[module] if replica == 1 else free_port()
    return containers.start(
        f"{module.replace('_', '-')}-{replica}", module, setup.env, port, setup.config.ca_file
    )


def run_job(
    containers: Containers, setup: Deployment, action: str
) -> subprocess.CompletedProcess[str]:
    """Runs `python -m mailbox_link_shared.topics ACTION` from the image (the topics Job)."""
    name = f"{PREFIX}topics-{action}-{secrets.token_hex(3)}"
    env_file = containers.workdir / f"{name}.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in setup.env.items()))
    env_file.chmod(0o600)
    containers.names.append(name)
    return podman(
        "run", "--name", name, "--network", "host", "--read-only", "--tmpfs", "/tmp",
        "--user", SERVICE_USER, "--env-file", str(env_file),
        APP_IMAGE, "python", "-m", "mailbox_link_shared.topics", action,
        check=False, timeout=120,
    )  # fmt: skip


def product(setup: Deployment) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {setup.config.caller_token}"}
    return httpx.AsyncClient(base_url=setup.api_url, headers=headers, timeout=10)


def test_the_image_runs_as_uid_10001_on_a_read_only_root_without_dev_packages(
    app_image: AppImageBuild,
) -> None:
    assert app_image.size_bytes < 400e6, f"image is {app_image.size_bytes / 1e6:.0f} MB"
    out = run_in_image(
        "python", "-c",
        "import os, sys, importlib.util as u, link_api, registry, imap_verifier, oauth_broker;"
        "print(os.getuid(), os.getgid());"
        f"print([m for m in {NOT_IN_IMAGE!r} if u.find_spec(m)]);"
        "print(sys.dont_write_bytecode);"
        "import mailbox_link_shared.kafka as k;"
        "print(os.path.exists(k.__cached__ or ''))",
    )  # fmt: skip
    uid_gid, dev_packages, no_bytecode, compiled = out.split("\n")[:4]
    assert uid_gid == "10001 10001"
    assert dev_packages == "[]", f"development packages in the image: {dev_packages}"
    assert no_bytecode == "True"  # PYTHONDONTWRITEBYTECODE: nothing to write at run time
    assert compiled == "True", "bytecode is compiled at build time"
    # Nothing but /tmp is writable: not the code, not the working directory, not the root.
    checks = run_in_image(
        "sh", "-c",
        "for d in / /opt/venv /opt/venv/lib /tmp \"$PWD\"; do "
        "touch \"$d/.w\" 2>/dev/null && echo \"$d writable\"; done; grep 10001 /etc/passwd",
    )  # fmt: skip
    assert checks.splitlines()[0] == "/tmp writable", checks
    assert len(checks.splitlines()) == 2, checks
    assert checks.splitlines()[1].endswith(":/usr/sbin/nologin"), checks
    inspected = json.loads(podman("image", "inspect", APP_IMAGE).stdout)[0]["Config"]
    assert inspected["User"].startswith(SERVICE_USER)
    assert not [e for e in inspected["Env"] if e.startswith("MBL_") and "KEY" in e], "secret"
    assert {"8080/tcp", "8081/tcp", "8082/tcp", "8083/tcp"} <= set(inspected["ExposedPorts"])


async def test_a_password_link_reaches_linked_through_the_four_services_in_containers(
    app_image: AppImageBuild, containers: Containers, infra: Endpoints, new_mail_user: Any
) -> None:
    # As production runs it: the topics Job first, then services that create no topic.
    setup = deployment(infra, MBL_KAFKA_CREATE_TOPICS="false")
    ensured = await asyncio.to_thread(run_job, containers, setup, "ensure")
    assert ensured.returncode == 0, ensured.stdout + ensured.stderr
    checked = await asyncio.to_thread(run_job, containers, setup, "check")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    for module in ("registry", "imap_verifier", "oauth_broker", "link_api"):
        await asyncio.to_thread(start, containers, setup, module)
    print(f"\nservice start (podman run to /healthz): {containers.start_seconds}")

    user = new_mail_user("image")
    async with product(setup) as api:
        accepted = await request_link(api, "acme", unique_user_id(), imap_body(infra, user))
        link = await wait_for_outcome(api, accepted["status_url"], seconds=60)
    assert link["status"] == "linked", link
    services = list(containers.start_seconds)  # the services, not the finished jobs
    for name in services:
        assert inspect_state(name)["Running"], f"{name} stopped:\n{logs(name)}"
    # Each stops cleanly on SIGTERM as PID 1, well inside podman's grace.
    stop_seconds = await asyncio.gather(*(asyncio.to_thread(_timed_stop, n) for n in services))
    print(f"podman stop: {dict(zip(services, stop_seconds, strict=True))}")
    for name, seconds in zip(services, stop_seconds, strict=True):
        assert inspect_state(name)["ExitCode"] == 0, f"{name}:\n{logs(name)}"
        assert seconds < PODMAN_STOP_TIMEOUT, name
        assert "Traceback" not in logs(name), logs(name)


async def test_podman_stop_of_a_verifier_mid_burst_loses_no_link_and_exits_0_in_its_grace(
    app_image: AppImageBuild, containers: Containers, infra: Endpoints, new_mail_user: Any
) -> None:
    setup = deployment(infra)
    for module in ("registry", "link_api"):
        await asyncio.to_thread(start, containers, setup, module)
    # Two verifiers in one consumer group, three of link-requests' six partitions each.
    verifiers = [await asyncio.to_thread(start, containers, setup, "imap_verifier", n)
                 for n in (1, 2)]  # fmt: skip
    users = [new_mail_user(f"burst{n}") for n in range(BURST_LINKS)]
    namespace = setup.config.namespace

    async with MailboxesTopic(infra.kafka_bootstrap, namespace) as topic, product(setup) as api:
        half = BURST_LINKS // 2
        first = await asyncio.gather(
            *(
                request_link(api, "acme", unique_user_id(), imap_body(infra, u))
                for u in users[:half]
            )
        )
        # Mid-burst: the first half is in the verifiers' hands, the rest is still to come.
        stopping = asyncio.create_task(asyncio.to_thread(_timed_stop, verifiers[0]))
        rest = await asyncio.gather(
            *(
                request_link(api, "acme", unique_user_id(), imap_body(infra, u))
                for u in users[half:]
            )
        )
        stop_seconds = await stopping
        members = await _group_members(
            infra.kafka_bootstrap, f"{namespace}.{VERIFIER_GROUP_SUFFIX}"
        )
        outcomes = await asyncio.gather(
            *(wait_for_outcome(api, a["status_url"], seconds=90) for a in [*first, *rest])
        )
        link_ids = [a["link_id"] for a in [*first, *rest]]
        await topic.wait_for_finals(link_ids)

    state = inspect_state(verifiers[0])
    print(f"\npodman stop took {stop_seconds:.1f} s, exit code {state['ExitCode']}")
    assert state["ExitCode"] == 0, f"not a clean exit (137: killed):\n{logs(verifiers[0])}"
    assert stop_seconds < PODMAN_STOP_TIMEOUT, "it outlived podman's grace"
    assert "Traceback" not in logs(verifiers[0]), logs(verifiers[0])
    # It left the group on its way out (not after the session timeout, as a crash would).
    assert members == 1, f"{members} members right after the stop"

    assert [o["status"] for o in outcomes] == ["linked"] * BURST_LINKS, outcomes
    finals = topic.finals()
    assert all(len(finals[i]) == 1 for i in link_ids), "a link ended twice"
    documents = await registry_documents(infra.mongodb_uri, namespace)
    linked = [d["address"] for d in documents["links"] if d["state"] == "linked"]
    assert sorted(linked) == sorted(u.address for u in users), "not one mailbox per address"
    assert_registry_consistent(documents)
    assert inspect_state(verifiers[1])["Running"]


@pytest.fixture
def silent_mail_server(infra: Endpoints) -> Iterator[int]:
    """A port that accepts connections and never answers (a mail server that hangs)."""
    tls = Path(infra.ca_file).parent
    servers = HostileMailServers(tls / "server.pem", tls / "server.key").start()
    try:
        yield servers.ports["silent"]
    finally:
        servers.stop()


async def test_podman_stop_while_a_check_hangs_exits_0_and_the_link_still_ends_once(
    app_image: AppImageBuild,
    containers: Containers,
    infra: Endpoints,
    new_mail_user: Any,
    silent_mail_server: int,
) -> None:
    # A check cut off by a stop is not started again (the verifier logs in at most once per
    # link): the registry's reservation lapses and ends it. Short here, 15 min by default.
    setup = deployment(
        infra, MBL_RESERVATION_TTL_SECONDS="30", MBL_HOUSEKEEPING_INTERVAL_SECONDS="1"
    )
    for module in ("registry", "link_api"):
        await asyncio.to_thread(start, containers, setup, module)
    verifier = await asyncio.to_thread(start, containers, setup, "imap_verifier", 1)
    body = imap_body(infra, new_mail_user("hang"), imap_port=silent_mail_server)
    async with MailboxesTopic(infra.kafka_bootstrap, setup.config.namespace) as topic:
        async with product(setup) as api:
            accepted = await request_link(api, "acme", unique_user_id(), body)
            # The check waits for the silent server for MBL_VERIFIER_TIMEOUT_SECONDS (15 s):
            # stop the verifier in the middle of it.
            await asyncio.sleep(4)
            stop_seconds = await asyncio.to_thread(_timed_stop, verifier)
            stopped_log = logs(verifier)
            state = inspect_state(verifier)
            print(f"\nstop with a hanging check: {stop_seconds:.1f} s, exit {state['ExitCode']}")
            assert state["ExitCode"] == 0, f"killed by podman after its grace:\n{stopped_log}"
            assert stop_seconds < PODMAN_STOP_TIMEOUT
            assert "1 events in progress let go" in stopped_log, stopped_log
            await asyncio.to_thread(start, containers, setup, "imap_verifier", 2)
            link = await wait_for_outcome(api, accepted["status_url"], seconds=90)
        await topic.wait_for_finals([accepted["link_id"]])

    assert link["status"] == "failed", link
    assert link["failure"]["code"] == "reservation_expired", link
    assert len(topic.finals()[accepted["link_id"]]) == 1


def _timed_stop(name: str) -> float:
    started = time.monotonic()
    podman("stop", "--time", str(PODMAN_STOP_TIMEOUT), name, timeout=60)
    return time.monotonic() - started


async def _group_members(bootstrap: str, group_id: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [response] = await admin.describe_consumer_groups([group_id])
        [group] = response.groups
        return len(group[5])  # (error, group_id, state, protocol_type, protocol, members, ...)
    finally:
        await admin.close()
