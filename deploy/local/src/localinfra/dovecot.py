"""Dovecot 2.3 instances (IMAP, POP3, submission) from generated configs in temp dirs.

Three kinds, all sharing one passwd-file of users and one maildir root:
- ``mail``: IMAP (STARTTLS) + IMAPS, submission (STARTTLS) + submissions, cert from the test CA,
  relaying submitted mail to the submission relay (delivers to local domains, drops the rest);
- ``pop3only``: ``protocols = pop3`` with POP3 (STARTTLS allowed) and POP3S;
- ``untrusted``: IMAPS + submissions with a self-signed cert no test CA vouches for.
"""

from __future__ import annotations

import enum
import grp
import math
import os
import pwd
import secrets
import shutil
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from localinfra.apt import find_binary, install_packages
from localinfra.cache import InstallResult
from localinfra.certs import TlsFiles
from localinfra.ports import free_port, wait_for_banner
from localinfra.procs import ManagedProcess, ServerFailedError
from localinfra.relay import SubmissionRelay

APT_PACKAGES = (
    "dovecot-core",
    "dovecot-imapd",
    "dovecot-pop3d",
    "dovecot-submissiond",
    "dovecot-lmtpd",
)


class DovecotKind(enum.StrEnum):
    """What a Dovecot instance imitates."""

    MAIL = "mail"
    POP3ONLY = "pop3only"
    UNTRUSTED = "untrusted"
    # IMAPS + submissions, logins by XOAUTH2/OAUTHBEARER only; LMTP delivers to any address
    # (OAuth logins are in no users file) in the shared mail root.
    OAUTH = "oauth"
    ATTACKER = "attacker"  # IMAPS + submissions, its own users and mail root


def dovecot_binary() -> str | None:
    """Path of ``dovecot``, if installed."""
    return find_binary("dovecot")


def install_dovecot() -> InstallResult:
    """Install the Debian packages when ``dovecot`` is missing (needs root and apt)."""
    return install_packages("dovecot", APT_PACKAGES)


def check_credentials(username: str, password: str) -> None:
    """Reject values the passwd-file format cannot hold."""
    for value in (username, password):
        if not value or any(ch in value for ch in ":\r\n\0"):
            raise ValueError("username and password must be non-empty, without ':' or EOL")


class MailUsers:
    """The passwd-file shared by all instances.

    Dovecot's passwd-file driver re-reads the file when its mtime or size changed, but it
    checks at most once per wall-clock second. So ``add`` gives the file a strictly newer
    mtime and, once servers are running (``live``), returns only after the second has rolled
    over: the next login then sees the new user. Users added before start cost nothing.
    """

    def __init__(self, path: Path, mail_root: Path) -> None:
        self.path = path
        # The userdb: login names and delivery addresses, each with its maildir home.
        self.userdb_path = path.with_suffix(".userdb")
        self.mail_root = mail_root
        self.live = False
        self._lock = threading.Lock()
        self._users: dict[str, str] = {}
        self._homes: dict[str, str] = {}
        self._last_mtime = 0
        self._write()

    def add(self, username: str, password: str, address: str | None = None) -> None:
        """Add or replace a user (``{PLAIN}`` password: these are test accounts).

        ``address``: the mailbox's address when it differs from the login (hosting-provider
        style): LMTP mail to ``address`` lands in the INBOX that ``username`` reads.
        """
        check_credentials(username, password)
        if address is not None:
            check_credentials(address, password)
        with self._lock:
            self._users[username] = password
            home = self._home(address or username)
            self._homes[username] = home
            if address is not None:
                self._homes[address] = home
            self._write()
            if self.live:
                time.sleep(math.floor(time.time()) + 1.02 - time.time())

    def _home(self, address: str) -> str:
        # As the former static userdb's home=<root>/%d/%n.
        local, _, domain = address.rpartition("@") if "@" in address else (address, "", "")
        return f"{self.mail_root}/{domain}/{local}"

    def _write(self) -> None:
        run_as = _run_as()
        homes = "".join(
            f"{name}::{run_as.uid}:{run_as.gid}::{home}::\n" for name, home in self._homes.items()
        )
        self._replace(self.userdb_path, homes)
        # Write-and-rename: Dovecot never reads a half-written file. 0644 because the auth
        # process reads it as user "dovecot".
        text = "".join(f"{user}:{{PLAIN}}{pw}::::::\n" for user, pw in self._users.items())
        self._replace(self.path, text)

    def _replace(self, path: Path, text: str) -> None:
        staging = path.with_suffix(".tmp")
        staging.write_text(text)
        staging.chmod(0o644)
        # Whole-second mtimes that always increase, so a same-size rewrite within one
        # second is still seen as a change.
        self._last_mtime = max(math.ceil(time.time()), self._last_mtime + 1)
        os.utime(staging, (self._last_mtime, self._last_mtime))
        staging.replace(path)


@dataclass
class DovecotPorts:
    """Listener ports of one instance; 0 means the listener is disabled."""

    imap: int = 0
    imaps: int = 0
    submission: int = 0
    submissions: int = 0
    pop3: int = 0
    pop3s: int = 0
    lmtp: int = 0  # the MAIL and OAUTH instances' LMTP (delivery into the maildirs IMAP reads)


@dataclass(frozen=True)
class _RunAs:
    uid: int
    gid: int
    user: str
    group: str
    as_root: bool


def _run_as() -> _RunAs:
    # As root, Dovecot separates privileges and mail must belong to an unprivileged user.
    if os.geteuid() == 0:
        user = pwd.getpwnam("nobody")
        group = grp.getgrgid(user.pw_gid)
        return _RunAs(user.pw_uid, group.gr_gid, user.pw_name, group.gr_name, True)
    me = pwd.getpwuid(os.geteuid())
    return _RunAs(me.pw_uid, os.getegid(), me.pw_name, grp.getgrgid(os.getegid()).gr_name, False)


class DovecotServer:
    """One ``dovecot -F`` process of a given kind, configured in its own fresh directory."""

    def __init__(
        self,
        kind: DovecotKind,
        workdir: Path,
        tls: TlsFiles,
        users_file: Path,
        mail_root: Path,
        relay_port: int = 0,
        introspection_url: str = "",
        username_attribute: str = "username",
    ) -> None:
        self.userdb_file = users_file.with_suffix(".userdb")
        self.kind = kind
        self.workdir = workdir
        self.tls = tls
        self.users_file = users_file
        self.mail_root = mail_root
        self.relay_port = relay_port
        self.introspection_url = introspection_url
        # Which field of the introspection answer is the login name (the OIDC provider's
        # answers name the mailbox in `email`).
        self.username_attribute = username_attribute
        self.ports = DovecotPorts()
        self._proc: ManagedProcess | None = None

    def launch(self) -> None:
        """Write a fresh config (new ports, new base_dir) and start Dovecot; do not wait."""
        binary = dovecot_binary()
        if binary is None:
            raise RuntimeError("dovecot not installed (run: python -m localinfra install)")
        # A fresh directory per launch: a stale auth-penalty socket in an old base_dir stalls
        # every authentication by 5 s.
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o755)
        for old in self.workdir.glob("run-*"):  # earlier (stopped) runs in a reused workdir
            shutil.rmtree(old, ignore_errors=True)
        instance_dir = self.workdir / f"run-{secrets.token_hex(4)}"
        instance_dir.mkdir(mode=0o755)
        self.ports = self._pick_ports()
        config = instance_dir / "dovecot.conf"
        config.write_text(self._config(instance_dir))
        config.chmod(0o644)
        if self.kind is DovecotKind.OAUTH:
            oauth2 = instance_dir / "oauth2.conf.ext"
            oauth2.write_text(
                "introspection_mode = post\n"
                f"introspection_url = {self.introspection_url}\n"
                "force_introspection = yes\n"
                f"username_attribute = {self.username_attribute}\n"
                "active_attribute = active\n"
                "active_value = true\n"
            )
            oauth2.chmod(0o644)
        self._proc = ManagedProcess(
            f"dovecot-{self.kind}",
            [binary, "-F", "-c", str(config)],
            instance_dir / "dovecot.log",  # also log_path: both writers append
            cwd=instance_dir,
        )
        self._proc.start()

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Wait for each protocol's greeting, not just open ports."""
        proc = self._require_proc()
        unverified = ssl.create_default_context()
        unverified.check_hostname = False
        unverified.verify_mode = ssl.CERT_NONE
        checks: list[tuple[int, bytes, ssl.SSLContext | None]] = [
            (self.ports.imap, b"* OK", None),
            (self.ports.submission, b"220", None),
            (self.ports.pop3, b"+OK", None),
            (self.ports.lmtp, b"220", None),
            # The untrusted kind has only implicit-TLS ports: greet through TLS, unverified.
            (0 if self.ports.imap else self.ports.imaps, b"* OK", unverified),
            (0 if self.ports.submission else self.ports.submissions, b"220", unverified),
        ]
        deadline = time.monotonic() + timeout
        try:
            for port, prefix, context in checks:
                if port:
                    remaining = max(0.5, deadline - time.monotonic())
                    wait_for_banner(
                        "127.0.0.1", port, prefix, remaining,
                        ssl_context=context, is_alive=proc.is_alive,
                    )  # fmt: skip
        except (TimeoutError, RuntimeError) as exc:
            raise proc.fail(str(exc)) from exc

    def start(self, timeout: float = 10.0) -> None:
        """Launch and wait, retrying once with new ports if one was taken meanwhile."""
        self.launch()
        self.finish_start(timeout)

    def finish_start(self, timeout: float = 10.0) -> None:
        """Second half of ``start`` after ``launch`` (lets callers launch many at once)."""
        try:
            self.wait_ready(timeout)
        except ServerFailedError as exc:
            self.stop()
            if "Address already in use" not in str(exc):
                raise
            self.launch()
            self.wait_ready(timeout)

    def stop(self) -> None:
        """SIGTERM Dovecot (it stops in ~1 s), SIGKILL after 10 s. Idempotent."""
        if self._proc is not None:
            self._proc.stop(timeout=10.0)

    def terminate(self) -> None:
        """Send SIGTERM without waiting (``stop`` then waits)."""
        if self._proc is not None:
            self._proc.terminate()

    @property
    def log_file(self) -> Path | None:
        """Log of the current run."""
        return self._proc.log_file if self._proc is not None else None

    def _require_proc(self) -> ManagedProcess:
        if self._proc is None:
            raise RuntimeError(f"dovecot-{self.kind} not launched")
        return self._proc

    def _pick_ports(self) -> DovecotPorts:
        if self.kind is DovecotKind.MAIL:
            return DovecotPorts(
                imap=free_port(),
                imaps=free_port(),
                submission=free_port(),
                submissions=free_port(),
                lmtp=free_port(),
            )
        if self.kind is DovecotKind.POP3ONLY:
            return DovecotPorts(pop3=free_port(), pop3s=free_port())
        if self.kind is DovecotKind.OAUTH:
            return DovecotPorts(imaps=free_port(), submissions=free_port(), lmtp=free_port())
        return DovecotPorts(imaps=free_port(), submissions=free_port())

    def _config(self, instance_dir: Path) -> str:
        run_as = _run_as()
        protocols = "pop3" if self.kind is DovecotKind.POP3ONLY else "imap submission"
        if self.ports.lmtp:
            protocols += " lmtp"
        p = self.ports
        static_userdb = f"uid={run_as.uid} gid={run_as.gid} home={self.mail_root}/%d/%n"
        if self.kind is DovecotKind.OAUTH:
            mechanisms = "xoauth2 oauthbearer"
            passdb = ["  driver = oauth2", f"  args = {instance_dir}/oauth2.conf.ext"]
            # LMTP asks the userdb alone; an oauth2 passdb cannot say whether a user exists.
            static_userdb = f"{static_userdb} allow_all_users=yes"
        else:
            mechanisms = "plain login"
            passdb = ["  driver = passwd-file",
                      f"  args = scheme=PLAIN username_format=%u {self.users_file}"]  # fmt: skip
        # Dovecot's config language has no user variables: paths are filled in here.
        lines = [
            "# Generated by localinfra; throw-away test server.",
            f"instance_name = mbl-{self.kind}-{instance_dir.name}",
            f"base_dir = {instance_dir}/base",
            f"state_dir = {instance_dir}/state",
            f"log_path = {instance_dir}/dovecot.log",
            "listen = 127.0.0.1",
            f"protocols = {protocols}",
            "hostname = localhost",
            "ssl = yes",
            f"ssl_cert = <{self.tls.cert_file}",
            f"ssl_key = <{self.tls.key_file}",
            "disable_plaintext_auth = no",
            f"auth_mechanisms = {mechanisms}",
            # No growing 2..15 s delay after failed logins: tests try wrong passwords.
            "auth_failure_delay = 0",
            "auth_verbose = yes",
            "first_valid_uid = 1",
            "first_valid_gid = 1",
            "mail_location = maildir:~/Maildir",
            "passdb {",
            *passdb,
            "}",
            # Logins and delivery addresses with their homes (MailUsers writes both files).
            "userdb {",
            "  driver = passwd-file",
            f"  args = username_format=%u {self.userdb_file}",
            "}",
            # OAuth logins carry the token's username, which no passwd-file lists: as before
            # the passwd-file userdb, any other name gets a home under the mail root.
            "userdb {",
            "  driver = static",
            f"  args = {static_userdb}",
            "}",
            # Making the auth-penalty socket unusable switches off anvil's per-IP penalty.
            "service anvil {",
            "  unix_listener anvil-auth-penalty {",
            "    mode = 0",
            "  }",
            "}",
            *_service("imap-login", [("imap", p.imap, False), ("imaps", p.imaps, True)], run_as),
            *_service("pop3-login", [("pop3", p.pop3, False), ("pop3s", p.pop3s, True)], run_as),
            *_service(
                "submission-login",
                [("submission", p.submission, False), ("submissions", p.submissions, True)],
                run_as,
            ),
            *_lmtp_service(p.lmtp),
            # Submission relays accepted mail here; without a listener QUIT gets 421.
            "submission_relay_host = 127.0.0.1",
            f"submission_relay_port = {self.relay_port or 25}",
            "submission_relay_ssl = no",
        ]
        if not run_as.as_root:
            # Without root there is no privilege separation: run every part as ourselves.
            lines += [
                f"default_internal_user = {run_as.user}",
                f"default_internal_group = {run_as.group}",
                f"default_login_user = {run_as.user}",
            ]
        return "\n".join(lines) + "\n"


def _service(name: str, listeners: list[tuple[str, int, bool]], run_as: _RunAs) -> list[str]:
    lines = [f"service {name} {{"]
    if not run_as.as_root:
        lines.append("  chroot =")  # chroot needs root
    for listener, port, implicit_tls in listeners:
        # Port 0 disables a listener (Dovecot's defaults are 143/993/110/995/587).
        lines += [f"  inet_listener {listener} {{", f"    port = {port}"]
        if implicit_tls:
            lines.append("    ssl = yes")
        lines.append("  }")
    lines.append("}")
    return lines


def _lmtp_service(port: int) -> list[str]:
    if not port:
        return []
    return [
        "service lmtp {",
        "  inet_listener lmtp {",
        "    address = 127.0.0.1",
        f"    port = {port}",
        "  }",
        "}",
    ]


class MailServers:
    """The submission relay and the Dovecot kinds, started together by one ``start`` call."""

    def __init__(
        self, workdir: Path, trusted: TlsFiles, untrusted: TlsFiles, introspection_url: str
    ) -> None:
        self.workdir = workdir
        self.trusted = trusted
        self.extra_servers: list[DovecotServer] = []  # started on demand (start_oauth_instance)
        workdir.mkdir(parents=True, exist_ok=True)
        workdir.chmod(0o755)
        _check_traversable(workdir)
        self.mail_root = workdir / "mail"
        self.users = MailUsers(workdir / "users.passwd", self.mail_root)
        # The attacker's Dovecot: its own users and maildirs, none of the main ones.
        self.attacker_mail_root = workdir / "attacker-mail"
        self.attacker_users = MailUsers(workdir / "attacker.passwd", self.attacker_mail_root)
        run_as = _run_as()
        for root in (self.mail_root, self.attacker_mail_root):
            root.mkdir(exist_ok=True)
            if run_as.as_root:
                # Mail processes run as the unprivileged userdb uid and create maildirs here.
                os.chown(root, run_as.uid, run_as.gid)
        # Where every Dovecot's submission hands accepted mail (routes: `route_submissions`).
        self.submission_relay = SubmissionRelay(workdir / "submission-relay")
        self.servers = {
            kind: DovecotServer(
                kind,
                workdir / f"dovecot-{kind}",
                untrusted if kind is DovecotKind.UNTRUSTED else trusted,
                self.attacker_users.path if kind is DovecotKind.ATTACKER else self.users.path,
                self.attacker_mail_root if kind is DovecotKind.ATTACKER else self.mail_root,
                introspection_url=introspection_url,
            )
            for kind in DovecotKind
        }

    def start(self, timeout: float = 15.0) -> None:
        """Launch everything at once, then wait for each greeting."""
        install_dovecot()
        try:
            # The relay first (~0.3 s): its port goes into the Dovecot configs. Mail is not
            # the stack's critical path (Kafka is), so this costs nothing overall.
            self.submission_relay.start(timeout)
            for server in self.servers.values():
                server.relay_port = self.submission_relay.port
                server.launch()
            for server in self.servers.values():
                server.finish_start(timeout)
            self.users.live = True
            self.attacker_users.live = True
        except BaseException:
            self.stop()
            raise

    def start_oauth_instance(
        self, name: str, introspection_url: str, username_attribute: str, timeout: float = 15.0
    ) -> DovecotServer:
        """Starts one more XOAUTH2/OAUTHBEARER-only Dovecot (IMAPS + submissions, the trusted
        certificate, the shared mail root) whose tokens are checked at `introspection_url`
        (credentials may be in its userinfo part); stopped with the others."""
        server = DovecotServer(
            DovecotKind.OAUTH,
            self.workdir / f"dovecot-{name}",
            self.trusted,
            self.users.path,
            self.mail_root,
            relay_port=self.submission_relay.port,
            introspection_url=introspection_url,
            username_attribute=username_attribute,
        )
        self.extra_servers.append(server)
        server.start(timeout)
        return server

    def route_submissions(self, routes: dict[str, tuple[str, int]]) -> None:
        """Makes mail submitted to any Dovecot for these domains arrive at these LMTP servers
        (other recipients are dropped)."""
        self.submission_relay.set_routes(routes)

    def add_user(self, username: str, password: str, address: str | None = None) -> None:
        """Add a mail user to every instance but the attacker's (takes effect immediately)."""
        self.users.add(username, password, address)

    def add_attacker_user(self, username: str, password: str) -> None:
        """Add a user to the attacker's Dovecot only."""
        self.attacker_users.add(username, password)

    def __getitem__(self, kind: DovecotKind) -> DovecotServer:
        return self.servers[kind]

    def stop(self) -> None:
        """Stop all Dovecot instances and the submission relay. Idempotent."""
        # Signal all first, then wait: each Dovecot takes ~1 s to shut down.
        servers = [*self.servers.values(), *self.extra_servers]
        for server in servers:
            server.terminate()
        self.submission_relay.terminate()
        for server in servers:
            server.stop()
        self.submission_relay.stop()


def _check_traversable(path: Path) -> None:
    # Dovecot's auth and mail processes run as other users: every parent dir must let
    # "others" through, or logins fail with "Temporary authentication failure".
    if os.geteuid() != 0:
        return
    for parent in [path, *path.parents]:
        if not parent.stat().st_mode & 0o001:
            raise RuntimeError(
                f"{parent} is not world-traversable (o+x); Dovecot's unprivileged processes "
                "could not reach the users file. Use a work dir under /tmp."
            )
