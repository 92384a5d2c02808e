"""``LocalStack``: Kafka, a MongoDB-protocol server and Dovecot, started in parallel.

Usage::

    with LocalStack() as stack:
        endpoints = stack.endpoints
        stack.add_mail_user("alice@example.org", "secret")
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from localinfra.certs import make_ca_and_server_cert, make_self_signed_cert
from localinfra.dns import DnsRecords, DnsServer
from localinfra.docker import DockerServers, docker_available
from localinfra.dovecot import DovecotKind, MailServers, check_credentials
from localinfra.kafka import KafkaServer
from localinfra.mongo import MongoServer, mongo_backend
from localinfra.oauth_server import LocalOAuthServer
from localinfra.oidc_idp import OidcIdp, OidcIdpSetup
from localinfra.ports import free_port
from localinfra.procs import install_sigterm_cleanup
from localinfra.relay import SmtpRelay
from localinfra.token_introspection import TokenIntrospection


@dataclasses.dataclass(frozen=True, kw_only=True)
class Endpoints:
    """Where the running servers listen. Plain values, so it round-trips through JSON."""

    kafka_bootstrap: str
    mongodb_uri: str
    mail_host: str = "127.0.0.1"
    tls_hostname: str = "localhost"  # name in the server certs; connect to mail_host
    imaps_port: int
    imap_starttls_port: int
    submission_starttls_port: int
    submissions_port: int
    pop3_port: int  # plain POP3, STARTTLS allowed (the POP3-only server)
    pop3s_port: int
    untrusted_imaps_port: int  # self-signed cert: verification with ca_file must fail
    untrusted_submissions_port: int
    # XOAUTH2/OAUTHBEARER only, tokens checked at the stack's introspection endpoint
    # (LocalStack.grant_oauth_token); same trusted certificate as the mail server.
    oauth_imaps_port: int = 0
    oauth_submissions_port: int = 0
    ca_file: str  # the test CA that signed the trusted servers' certificates
    closed_port: int  # nothing listens here: "connection refused"
    started_in_seconds: float
    workdir: str = ""  # server configs and logs
    # A DNS server for the `test` zone: DISCOVERABLE_DOMAIN's IMAP and submission servers are
    # published as SRV records pointing at the trusted Dovecot; NO_MAIL_DOMAIN has no MX.
    dns_server: str = ""
    # The local OAuth server (LocalOAuthServer): Google, Microsoft, Yahoo and AOL under
    # /google, /microsoft, ... over HTTPS with the trusted certificate (trust ca_file).
    oauth_server_url: str = ""
    # The MX-routing relay (no auth): mail for the test domains goes over LMTP to the trusted
    # Dovecot (lmtp_port); other domains get 550. The attacker's Dovecot has its own users
    # (LocalStack.add_attacker_user) and receives no mail.
    relay_port: int = 0
    lmtp_port: int = 0
    # The OAuth Dovecot's LMTP. Mail submitted to any Dovecot for OAUTH_MAIL_DOMAINS arrives
    # here (the submission relay), so an OAuth mailbox finds what it sent itself over IMAP;
    # mail for RELAYED_DOMAINS arrives at the trusted Dovecot (lmtp_port); the rest is dropped.
    oauth_lmtp_port: int = 0
    attacker_imaps_port: int = 0
    attacker_submissions_port: int = 0

    def to_json(self) -> str:
        """Serialise (e.g. to a state file for other processes)."""
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Endpoints:
        """Inverse of ``to_json``; unknown keys are ignored for forward compatibility."""
        data: dict[str, Any] = json.loads(text)
        names = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in names})


DISCOVERABLE_DOMAIN = "discover.test"
NO_MAIL_DOMAIN = "nomail.test"
OWN_MX_DOMAIN = "ownmx.test"  # an MX of its own and nothing that tells its IMAP settings
HOSTED_DOMAIN = "hosted.test"  # hosting-provider style: logins differ from addresses
# Domains whose MX the relay maps to the trusted Dovecot's LMTP.
RELAYED_DOMAINS = ("example.org", HOSTED_DOMAIN, DISCOVERABLE_DOMAIN, OWN_MX_DOMAIN)
# The local OAuth server's providers' domains, whose mailboxes live on the OAuth Dovecot. Only
# mail submitted through a local Dovecot reaches them: the MX-routing relay (ownership proofs)
# still refuses them, as internet mail it cannot deliver.
OAUTH_MAIL_DOMAINS = ("gmail.com", "googlemail.com", "outlook.com", "yahoo.com", "aol.com")


def _test_zone(imaps_port: int, submissions_port: int) -> DnsRecords:
    domain = DISCOVERABLE_DOMAIN
    return DnsRecords(
        zones=["test"],
        mx=[(relayed, f"mx.{relayed}", 10) for relayed in RELAYED_DOMAINS],
        srv=[
            (f"_imaps._tcp.{domain}", "localhost", imaps_port, 0),
            (f"_submissions._tcp.{domain}", "localhost", submissions_port, 0),
            ("_imaps._tcp.example.org", "localhost", imaps_port, 0),
            ("_submissions._tcp.example.org", "localhost", submissions_port, 0),
        ],
        a=[(NO_MAIL_DOMAIN, "192.0.2.25")],
    )


class LocalStack:
    """Starts and stops all servers the project's tests and local runs need.

    Kafka and MongoDB come from testcontainers when a Docker engine answers (or
    ``MBL_DOCKER=1``), else they run as local processes; Dovecot always runs locally.
    """

    def __init__(
        self,
        *,
        kafka_heap_mb: int = 512,
        auto_create_topics: bool = True,
        dns_forwarding: bool = False,
    ) -> None:
        self.kafka_heap_mb = kafka_heap_mb
        self.dns_forwarding = dns_forwarding
        self.auto_create_topics = auto_create_topics
        self._lock = threading.Lock()
        self._stoppers: list[Callable[[], None]] = []
        self._mail: MailServers | None = None
        self._introspection: TokenIntrospection | None = None
        self._oauth_server: LocalOAuthServer | None = None
        self._oidc_idp: OidcIdpSetup | None = None
        self._mail_users: dict[str, tuple[str, str | None]] = {}
        self._attacker_users: dict[str, str] = {}
        self._endpoints: Endpoints | None = None
        self._workdir: Path | None = None
        self._own_workdir = False
        # Kept for outages: stop_kafka/start_kafka, stop_mongo/start_mongo (local processes).
        self._kafka: KafkaServer | None = None
        self._mongo: MongoServer | None = None

    @property
    def endpoints(self) -> Endpoints:
        """Endpoints of the running stack."""
        if self._endpoints is None:
            raise RuntimeError("LocalStack not started")
        return self._endpoints

    @property
    def oauth_server(self) -> LocalOAuthServer:
        """The running stack's OAuth server (in-process: register clients, add users)."""
        if self._oauth_server is None:
            raise RuntimeError("LocalStack not started")
        return self._oauth_server

    def start(self, workdir: Path | None = None) -> Endpoints:
        """Start everything (in parallel) and return the endpoints once all answer.

        ``workdir`` holds configs, data and logs; default: a fresh temp dir removed by
        ``stop`` (kept when ``MBL_KEEP_WORKDIR=1``). On failure everything started is
        stopped, the work dir is kept, and the error carries the failing server's log tail.
        """
        with self._lock:
            if self._endpoints is not None:
                return self._endpoints
            began = time.monotonic()
            root = self._prepare_workdir(workdir)
            # Registered before anything starts: an interpreter exit still cleans up.
            atexit.register(self.stop)
            install_sigterm_cleanup()
            try:
                self._endpoints = self._start_all(root, began)
            except BaseException:
                # Keep the work dir: the error names log files in it.
                self._stop_locked(remove_workdir=False)
                raise
            return self._endpoints

    def _prepare_workdir(self, workdir: Path | None) -> Path:
        if workdir is None:
            root = Path(tempfile.mkdtemp(prefix="mbl-localstack-"))
            self._own_workdir = True
        else:
            root = workdir.resolve()
            root.mkdir(parents=True, exist_ok=True)
            self._own_workdir = False
        # Dovecot's unprivileged processes must traverse it (mkdtemp makes 0700).
        root.chmod(0o755)
        self._workdir = root
        return root

    def _start_all(self, root: Path, began: float) -> Endpoints:
        trusted = make_ca_and_server_cert(root / "tls")
        untrusted = make_self_signed_cert(root / "tls-untrusted")
        introspection = TokenIntrospection()
        introspection.start()
        self._introspection = introspection
        self._stoppers.append(introspection.stop)
        oauth_server = LocalOAuthServer(introspection, trusted.cert_file, trusted.key_file)
        oauth_server.start()
        self._oauth_server = oauth_server
        self._stoppers.append(oauth_server.stop)
        mail = MailServers(root / "mail", trusted, untrusted, introspection.url)
        for username, (password, address) in self._mail_users.items():
            mail.add_user(username, password, address)  # before start: no reload wait
        for username, password in self._attacker_users.items():
            mail.add_attacker_user(username, password)
        self._mail = mail
        self._stoppers.append(mail.stop)
        tasks: dict[str, Callable[[], str]] = {"mail": lambda: _call(mail.start)}
        if docker_available():
            docker = DockerServers()
            self._stoppers.append(docker.stop)
            tasks["kafka"] = docker.start_kafka
            if mongo_backend() != "external":
                tasks["mongo"] = docker.start_mongo
        else:
            kafka = KafkaServer(
                root / "kafka",
                heap_mb=self.kafka_heap_mb,
                auto_create_topics=self.auto_create_topics,
            )
            self._stoppers.append(kafka.stop)
            self._kafka = kafka
            tasks["kafka"] = kafka.start
        if "mongo" not in tasks:
            mongo = MongoServer(root / "mongo")
            self._stoppers.append(mongo.stop)
            self._mongo = mongo
            tasks["mongo"] = mongo.start
        results = _run_parallel(tasks)
        mail_ports = mail[DovecotKind.MAIL].ports
        oauth_ports = mail[DovecotKind.OAUTH].ports
        submission_routes = {d: ("127.0.0.1", mail_ports.lmtp) for d in RELAYED_DOMAINS}
        submission_routes |= {d: ("127.0.0.1", oauth_ports.lmtp) for d in OAUTH_MAIL_DOMAINS}
        mail.route_submissions(submission_routes)
        zone = _test_zone(mail_ports.imaps, mail_ports.submissions)
        dns = DnsServer(root / "dns", zone, forward=self.dns_forwarding)
        self._stoppers.append(dns.stop)
        dns_port = dns.start()
        transport = {f"mx.{d}": ("127.0.0.1", mail_ports.lmtp) for d in RELAYED_DOMAINS}
        relay = SmtpRelay(root / "relay", ("127.0.0.1", dns_port), transport)
        self._stoppers.append(relay.stop)
        relay.start()
        attacker_ports = mail[DovecotKind.ATTACKER].ports
        pop3_ports = mail[DovecotKind.POP3ONLY].ports
        untrusted_ports = mail[DovecotKind.UNTRUSTED].ports
        return Endpoints(
            kafka_bootstrap=results["kafka"],
            mongodb_uri=results["mongo"],
            imaps_port=mail_ports.imaps,
            imap_starttls_port=mail_ports.imap,
            submission_starttls_port=mail_ports.submission,
            submissions_port=mail_ports.submissions,
            pop3_port=pop3_ports.pop3,
            pop3s_port=pop3_ports.pop3s,
            untrusted_imaps_port=untrusted_ports.imaps,
            untrusted_submissions_port=untrusted_ports.submissions,
            oauth_imaps_port=oauth_ports.imaps,
            oauth_submissions_port=oauth_ports.submissions,
            ca_file=str(trusted.ca_file),
            closed_port=free_port(),
            started_in_seconds=round(time.monotonic() - began, 3),
            workdir=str(root),
            dns_server=f"127.0.0.1:{dns_port}",
            oauth_server_url=oauth_server.base_url,
            relay_port=relay.port,
            lmtp_port=mail_ports.lmtp,
            oauth_lmtp_port=oauth_ports.lmtp,
            attacker_imaps_port=attacker_ports.imaps,
            attacker_submissions_port=attacker_ports.submissions,
        )

    def oidc_idp(self) -> OidcIdpSetup:
        """The independent OpenID provider and a Dovecot that accepts its tokens, started on
        the first call (a few seconds; only the tests that need them pay for them) and stopped
        with the stack."""
        with self._lock:
            if self._oidc_idp is not None:
                return self._oidc_idp
            if self._mail is None or self._workdir is None or self._endpoints is None:
                raise RuntimeError("LocalStack not started")
            idp = OidcIdp(self._workdir / "oidc-idp")
            self._stoppers.append(idp.stop)
            idp.start()
            # Its client credentials in the URL: Dovecot sends them as HTTP Basic auth.
            dovecot = self._mail.start_oauth_instance(
                "oidc-idp", idp.introspection_url_with_credentials(), username_attribute="email"
            )
            if dovecot.log_file is None:  # pragma: no cover - set by a successful start
                raise RuntimeError("the OIDC provider's Dovecot has no log")
            self._oidc_idp = OidcIdpSetup(
                idp=idp,
                mail_host=self._endpoints.mail_host,
                tls_hostname=self._endpoints.tls_hostname,
                imaps_port=dovecot.ports.imaps,
                submissions_port=dovecot.ports.submissions,
                mail_log=dovecot.log_file,
            )
            return self._oidc_idp

    def grant_oauth_token(self, token: str, username: str) -> None:
        """Makes the OAuth Dovecot accept `token` (XOAUTH2/OAUTHBEARER) as `username`."""
        if self._introspection is None:
            raise RuntimeError("LocalStack not started")
        self._introspection.grant(token, username)

    def revoke_oauth_token(self, token: str) -> None:
        """Makes the OAuth Dovecot refuse `token` from now on."""
        if self._introspection is not None:
            self._introspection.revoke(token)

    def add_mail_user(self, username: str, password: str, address: str | None = None) -> None:
        """Create (or re-password) a mail user on every Dovecot instance but the attacker's.

        ``address``: the mailbox's address when the login differs (hosting-provider style,
        e.g. login ``hostuser7`` for ``frank@hosted.test``): mail the relay delivers to
        ``address`` lands in the INBOX that ``username`` reads. By default the login is the
        address. Before ``start`` this is free; on a running stack it takes up to 1 s
        (Dovecot re-reads its users file at most once per second). Users survive a restart.
        """
        check_credentials(username, password)
        with self._lock:
            self._mail_users[username] = (password, address)
            if self._mail is not None:
                self._mail.add_user(username, password, address)

    def set_mail_password(self, username: str, password: str) -> None:
        """Change an existing mail user's password on every Dovecot instance but the
        attacker's, as the user would at their provider: from the next login on the old
        password is refused (IMAP and submission) and the new one works; the user keeps its
        address and mail. Dovecot caches no auth here (auth_cache_size is 0) and re-reads the
        passwd-file when it changed, so on a running stack this takes up to 1 s, as
        ``add_mail_user``. KeyError if there is no such user."""
        check_credentials(username, password)
        with self._lock:
            if username not in self._mail_users:
                raise KeyError(f"no mail user {username}")
            _, address = self._mail_users[username]
            self._mail_users[username] = (password, address)
            if self._mail is not None:
                self._mail.add_user(username, password, address)

    def add_attacker_user(self, username: str, password: str) -> None:
        """Create a user on the attacker's Dovecot only (its own users file and maildirs)."""
        check_credentials(username, password)
        with self._lock:
            self._attacker_users[username] = password
            if self._mail is not None:
                self._mail.add_attacker_user(username, password)

    def stop_kafka(self) -> None:
        """Stops Kafka (an outage); `start_kafka` brings it back on its data and port."""
        self._local_kafka().stop()

    def start_kafka(self, timeout: float = 60.0) -> None:
        """Starts the stopped Kafka again on its data and port; returns once it answers."""
        self._local_kafka().restart(timeout)

    def stop_mongo(self) -> None:
        """Stops the MongoDB-protocol server (an outage); `start_mongo` brings it back."""
        self._local_mongo().pause()

    def start_mongo(self, timeout: float = 30.0) -> None:
        """Starts the MongoDB-protocol server again on its data and port."""
        self._local_mongo().resume(timeout)

    def _local_kafka(self) -> KafkaServer:
        if self._kafka is None:
            raise RuntimeError(
                "Kafka is not a local process of this stack (Docker, or not started)"
            )
        return self._kafka

    def _local_mongo(self) -> MongoServer:
        if self._mongo is None or self._mongo.backend == "external":
            raise RuntimeError("the MongoDB-protocol server is not a local process of this stack")
        return self._mongo

    def stop(self) -> None:
        """Stop every server (in parallel) and remove an own temp workdir. Idempotent."""
        with self._lock:
            self._stop_locked()

    def _stop_locked(self, remove_workdir: bool = True) -> None:
        stoppers, self._stoppers = self._stoppers, []
        _stop_all(stoppers)
        atexit.unregister(self.stop)
        self._endpoints = None
        self._mail = None
        self._oauth_server = None
        self._oidc_idp = None
        self._kafka = self._mongo = None
        if self._own_workdir and self._workdir is not None:
            if remove_workdir and os.environ.get("MBL_KEEP_WORKDIR") != "1":
                shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> LocalStack:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _stop_all(stoppers: list[Callable[[], None]]) -> None:
    """Run every stopper, in parallel threads when possible; one failing never blocks others.

    Plain threads, not an executor: ``concurrent.futures`` refuses work once the interpreter
    is shutting down, which is exactly when the atexit hook runs.
    """

    def guarded(stop: Callable[[], None]) -> None:
        with contextlib.suppress(Exception):
            stop()

    threads = [threading.Thread(target=guarded, args=(stop,), daemon=True) for stop in stoppers]
    try:
        for thread in threads:
            thread.start()
    except RuntimeError:  # no new threads this late in shutdown: stop one by one
        for stop, thread in zip(stoppers, threads, strict=True):
            if not thread.is_alive() and thread.ident is None:
                guarded(stop)
    for thread in threads:
        if thread.ident is not None:
            thread.join()


def _call(start: Callable[[], None]) -> str:
    start()
    return ""


def _run_parallel(tasks: dict[str, Callable[[], str]]) -> dict[str, str]:
    """Run each task in a thread; wait for all (so none is left half-started), then raise
    the first failure."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(tasks)) as pool:
        futures = {name: pool.submit(task) for name, task in tasks.items()}
        concurrent.futures.wait(futures.values())
    errors = [(name, f.exception()) for name, f in futures.items() if f.exception()]
    if errors:
        name, first = errors[0]
        others = ", ".join(n for n, _ in errors[1:])
        note = f" (also failed: {others})" if others else ""
        raise RuntimeError(f"{name} failed to start{note}: {first}") from first
    return {name: future.result() for name, future in futures.items()}
