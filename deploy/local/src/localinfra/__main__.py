"""CLI: ``python -m localinfra install | up | run | status``.

- ``install``: fetch/build every server once into the cache and say what was done;
- ``up``: start the whole stack, print its endpoints as JSON (and write them to a state
  file), then keep it running until SIGINT/SIGTERM;
- ``run``: ``up`` plus the four services, with a demo mailbox to link (``make run``);
- ``status``: probe every endpoint recorded in a state file.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import signal
import ssl
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from localinfra.cache import InstallResult
from localinfra.dns import install_dnsmasq
from localinfra.docker import docker_available
from localinfra.dovecot import install_dovecot
from localinfra.kafka import install_kafka, metadata_ok
from localinfra.mongo import (
    FERRETDB_BACKENDS,
    FERRETDB_POSTGRESQL,
    install_ferretdb,
    mongo_backend,
    ping,
)
from localinfra.oidc_idp import install_oidc_idp
from localinfra.ports import port_is_open, wait_for_banner
from localinfra.postgres import install_postgres
from localinfra.stack import Endpoints, LocalStack
from localinfra.system import run_system


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    parser = argparse.ArgumentParser(prog="python -m localinfra", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "install", help="install/build Kafka, FerretDB, PostgreSQL, Dovecot, the OpenID provider"
    )
    up = commands.add_parser("up", help="start everything and block until Ctrl-C")
    up.add_argument("--state-file", type=Path, help="write the endpoints JSON here")
    up.add_argument("--workdir", type=Path, help="configs, data and logs (default: temp dir)")
    up.add_argument("--demo-user", help="mail user to create, e.g. alice@example.org")
    up.add_argument("--demo-password", help="password of --demo-user")
    run = commands.add_parser("run", help="start the stack and the services (make run)")
    run.add_argument("--state-dir", type=Path, default=Path(".run"))
    run.add_argument("--api-port", type=int, default=8080)
    run.add_argument("--registry-port", type=int, default=8081)
    run.add_argument("--broker-port", type=int, default=8083)
    status = commands.add_parser("status", help="probe the endpoints of a running stack")
    status.add_argument("--state-file", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "install":
        return _install()
    if args.command == "up":
        if bool(args.demo_user) != bool(args.demo_password):
            parser.error("--demo-user and --demo-password go together")
        return _up(args.state_file, args.workdir, args.demo_user, args.demo_password)
    if args.command == "run":
        return _run(args.state_dir, (args.api_port, args.registry_port, args.broker_port))
    return _status(args.state_file)


def _run(state_dir: Path, ports: tuple[int, int, int]) -> int:
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    run_system(state_dir.resolve(), ports, stopping)
    return 0


def _install() -> int:
    steps: list[Callable[[], InstallResult]] = [install_dovecot, install_dnsmasq, install_oidc_idp]
    if docker_available():
        print("docker engine found: Kafka and MongoDB will run from testcontainers images")
    else:
        steps.append(install_kafka)
        backend = mongo_backend()
        if backend in FERRETDB_BACKENDS:
            steps.append(install_ferretdb)
            if backend == FERRETDB_POSTGRESQL:
                steps.append(install_postgres)
        else:
            print(f"MongoDB: using {backend} (nothing to build)")
    # Independent downloads/builds (apt, Maven, Go): run them side by side.
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(steps)) as pool:
        futures = [pool.submit(step) for step in steps]
    failed = False
    for future in futures:
        try:
            print(future.result().describe())
        except Exception as exc:
            print(f"FAILED: {exc}", file=sys.stderr)
            failed = True
    return 1 if failed else 0


def _up(
    state_file: Path | None,
    workdir: Path | None,
    demo_user: str | None,
    demo_password: str | None,
) -> int:
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    stack = LocalStack()
    try:
        if demo_user and demo_password:
            stack.add_mail_user(demo_user, demo_password)  # before start: no reload wait
        endpoints = stack.start(workdir)
        text = endpoints.to_json()
        if state_file is not None:
            # Write-and-rename: whoever polls for the file never reads half of it.
            staging = state_file.with_name(state_file.name + ".tmp")
            staging.write_text(text + "\n")
            staging.replace(state_file)
        print(text, flush=True)
        print(
            f"stack up in {endpoints.started_in_seconds:.2f} s (logs in {endpoints.workdir});"
            " Ctrl-C to stop",
            file=sys.stderr,
            flush=True,
        )
        stopping.wait()
    finally:
        began = time.monotonic()
        stack.stop()
        if state_file is not None:
            state_file.unlink(missing_ok=True)
        print(f"stopped in {time.monotonic() - began:.2f} s", file=sys.stderr)
    return 0


def _status(state_file: Path) -> int:
    try:
        endpoints = Endpoints.from_json(state_file.read_text())
    except FileNotFoundError:
        print(f"no state file at {state_file}: stack not running")
        return 1
    host = endpoints.mail_host
    tls = ssl.create_default_context(cafile=endpoints.ca_file)
    tls.check_hostname = False  # we connect to an IP; the cert names localhost
    probes: dict[str, Callable[[], object]] = {
        "kafka": lambda: metadata_ok(endpoints.kafka_bootstrap) or _fail("no brokers"),
        "mongodb": lambda: ping(endpoints.mongodb_uri),
        "imaps": lambda: wait_for_banner(host, endpoints.imaps_port, b"* OK", 2, ssl_context=tls),
        "imap": lambda: wait_for_banner(host, endpoints.imap_starttls_port, b"* OK", 2),
        "submission": lambda: wait_for_banner(host, endpoints.submission_starttls_port, b"220", 2),
        "submissions": lambda: wait_for_banner(
            host, endpoints.submissions_port, b"220", 2, ssl_context=tls
        ),
        "pop3": lambda: wait_for_banner(host, endpoints.pop3_port, b"+OK", 2),
        "pop3s": lambda: wait_for_banner(host, endpoints.pop3s_port, b"+OK", 2, ssl_context=tls),
        "untrusted-imaps": lambda: (
            port_is_open(host, endpoints.untrusted_imaps_port) or _fail("closed")
        ),
        "untrusted-submissions": lambda: (
            port_is_open(host, endpoints.untrusted_submissions_port) or _fail("closed")
        ),
    }
    healthy = True
    for name, probe in probes.items():
        try:
            probe()
            print(f"{name:22} up")
        except Exception as exc:
            healthy = False
            print(f"{name:22} DOWN ({type(exc).__name__}: {exc})")
    return 0 if healthy else 1


def _fail(reason: str) -> bool:
    raise RuntimeError(reason)


if __name__ == "__main__":
    sys.exit(main())
