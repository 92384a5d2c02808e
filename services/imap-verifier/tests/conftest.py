"""Real mail servers for the verifier's integration tests.

Stand-in until localinfra provides its own fixture: everything lives in the `mail_servers`
fixture, which starts three throwaway Dovecot instances (the main one with IMAP/STARTTLS, IMAPS,
submission/STARTTLS and submissions; a POP3-only one; one whose certificate nobody trusts) and
an aiosmtpd sink as the submission relay.
"""

import datetime
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Sink
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class MailServers:
    host: str
    tls_hostname: str
    imaps_port: int
    imap_starttls_port: int
    submission_starttls_port: int
    submissions_port: int
    pop3_port: int
    untrusted_imaps_port: int
    closed_port: int
    ca_file: Path
    user: str
    password: str


@pytest.fixture(scope="session")
def mail_servers() -> Iterator[MailServers]:
    if shutil.which("dovecot") is None:
        pytest.skip("dovecot is not installed")
    root = Path(tempfile.mkdtemp(prefix="imap-verifier-dovecot-"))
    processes: list[subprocess.Popen[bytes]] = []
    sink = Controller(Sink(), hostname="127.0.0.1", port=_free_port())
    sink.start()
    try:
        yield _start_all(root, sink.port, processes)
    finally:
        for process in processes:
            os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            process.wait(timeout=10)
        sink.stop()
        shutil.rmtree(root, ignore_errors=True)


def _start_all(
    root: Path, relay_port: int, processes: list[subprocess.Popen[bytes]]
) -> MailServers:
    # Dovecot's auth process runs as its own user: it must be able to read these files.
    root.chmod(0o755)
    ca_key, ca_cert = _certificate("mailbox-link test CA", issuer=None)
    key, cert = _certificate("localhost", issuer=(ca_key, ca_cert))
    rogue_key, rogue_cert = _certificate("localhost", issuer=None)
    ca_file = _write(root / "ca.pem", _pem(ca_cert))
    servers = MailServers(
        host="127.0.0.1",
        tls_hostname="localhost",
        imaps_port=_free_port(),
        imap_starttls_port=_free_port(),
        submission_starttls_port=_free_port(),
        submissions_port=_free_port(),
        pop3_port=_free_port(),
        untrusted_imaps_port=_free_port(),
        closed_port=_free_port(),
        ca_file=ca_file,
        user="alice@example.test",
        # Quotes, a backslash, a space and UTF-8 make any quoting mistake show.
        password='c0rrect "horse" \\ bättery',
    )
    _write(root / "users", f"{servers.user}:{{PLAIN}}{servers.password}::::::\n")
    main = _instance(
        root,
        "main",
        (key, cert),
        "imap submission",
        f"""
service imap-login {{
  inet_listener imap {{
    port = {servers.imap_starttls_port}
  }}
  inet_listener imaps {{
    port = {servers.imaps_port}
    ssl = yes
  }}
}}
service submission-login {{
  inet_listener submission {{
    port = {servers.submission_starttls_port}
  }}
  inet_listener submissions {{
    port = {servers.submissions_port}
    ssl = yes
  }}
}}
submission_relay_host = 127.0.0.1
submission_relay_port = {relay_port}
""",
    )
    pop3 = _instance(
        root,
        "pop3",
        (key, cert),
        "pop3",
        _listeners("pop3", {"pop3": servers.pop3_port, "pop3s": 0}),
    )
    rogue = _instance(
        root,
        "rogue",
        (rogue_key, rogue_cert),
        "imap",
        _listeners("imap", {"imap": 0, "imaps": servers.untrusted_imaps_port}),
    )
    for config in (main, pop3, rogue):
        processes.append(_launch(root, config))
    trusted = ssl.create_default_context(cafile=str(ca_file))
    _wait_banner(servers.imap_starttls_port, None)
    _wait_banner(servers.imaps_port, trusted)
    _wait_banner(servers.submissions_port, trusted)
    _wait_banner(servers.pop3_port, None)
    rogue_ca = _write(root / "rogue.pem", _pem(rogue_cert))
    _wait_banner(servers.untrusted_imaps_port, ssl.create_default_context(cafile=str(rogue_ca)))
    return servers


def _instance(
    root: Path,
    name: str,
    identity: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
    protocols: str,
    services: str,
) -> Path:
    directory = root / name
    directory.mkdir(mode=0o755)
    (root / "mail").mkdir(mode=0o755, exist_ok=True)
    key, cert = identity
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write(directory / "key.pem", key_pem.decode())
    _write(directory / "cert.pem", _pem(cert))
    uid, gid = _mail_owner()
    os.chown(root / "mail", uid, gid)
    config = f"""
instance_name = imap-verifier-test-{name}-{os.getpid()}
base_dir = {directory}/run
state_dir = {directory}/state
log_path = {directory}/dovecot.log
listen = 127.0.0.1
protocols = {protocols}
hostname = localhost
ssl = yes
ssl_cert = <{directory}/cert.pem
ssl_key = <{directory}/key.pem
auth_mechanisms = plain login
auth_failure_delay = 0
mail_location = maildir:{root}/mail/%u
passdb {{
  driver = passwd-file
  args = {root}/users
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={root}/mail/%u
}}
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
{_unprivileged_settings()}
{services}
"""
    return _write(directory / "dovecot.conf", config)


def _listeners(protocol: str, ports: dict[str, int]) -> str:
    blocks = "".join(
        f"  inet_listener {name} {{\n    port = {port}\n"
        + ("    ssl = yes\n" if name.endswith("s") else "")
        + "  }\n"
        for name, port in ports.items()
    )
    return f"service {protocol}-login {{\n{blocks}}}\n"


def _mail_owner() -> tuple[int, int]:
    if os.geteuid() != 0:
        return os.getuid(), os.getgid()
    nobody = pwd.getpwnam("nobody")  # root: mail processes must drop to someone unprivileged
    return nobody.pw_uid, nobody.pw_gid


def _unprivileged_settings() -> str:
    if os.geteuid() == 0:
        return ""
    me = pwd.getpwuid(os.getuid()).pw_name
    group = f"#{os.getgid()}"
    chroots = "".join(
        f"service {login}-login {{\n  chroot =\n}}\n" for login in ("imap", "pop3", "submission")
    )
    return (
        f"default_internal_user = {me}\ndefault_internal_group = {group}\n"
        f"default_login_user = {me}\n{chroots}"
    )


def _launch(root: Path, config: Path) -> subprocess.Popen[bytes]:
    with (config.parent / "stderr.log").open("wb") as errors:
        return subprocess.Popen(
            ["dovecot", "-F", "-c", str(config)],
            stdout=errors,
            stderr=errors,
            start_new_session=True,  # stop the whole process group by its id
            cwd=root,
        )


def _wait_banner(port: int, tls: ssl.SSLContext | None) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as raw:
                if tls is None:
                    if raw.recv(100):
                        return
                else:
                    with tls.wrap_socket(raw, server_hostname="localhost") as stream:
                        if stream.recv(100):
                            return
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.02)


def _certificate(
    name: str, issuer: tuple[ec.EllipticCurvePrivateKey, x509.Certificate] | None
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    signer_key, issuer_name = (key, subject) if issuer is None else (issuer[0], issuer[1].subject)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
    )
    if name == "localhost":
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False
        )
    else:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
    return key, builder.sign(signer_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    path.chmod(0o644)
    return path


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
