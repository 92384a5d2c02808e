"""Pieces of localinfra that need no servers: certs, ports, users file, stop semantics."""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from localinfra import LocalStack
from localinfra.certs import make_ca_and_server_cert, make_self_signed_cert
from localinfra.dovecot import MailUsers
from localinfra.ports import free_port, wait_for_banner
from localinfra.token_introspection import TokenIntrospection


def _tls_pair(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> None:
    """Handshake a server and a client over a socketpair; raise the client's error."""
    left, right = socket.socketpair()
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            with server_ctx.wrap_socket(left, server_side=True):
                pass
        except (ssl.SSLError, OSError) as exc:
            errors.append(exc)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client_ctx.wrap_socket(right, server_hostname="localhost"):
            pass
    finally:
        right.close()
        thread.join(5)
        left.close()


def _server(files_dir: Path, self_signed: bool) -> tuple[ssl.SSLContext, Path]:
    files = (make_self_signed_cert if self_signed else make_ca_and_server_cert)(files_dir)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(files.cert_file, files.key_file)
    return ctx, files.ca_file


def test_server_cert_verifies_with_ca(tmp_path: Path) -> None:
    server, ca = _server(tmp_path / "ok", self_signed=False)
    client = ssl.create_default_context(cafile=str(ca))
    client.verify_flags |= ssl.VERIFY_X509_STRICT
    _tls_pair(server, client)


def test_self_signed_cert_fails_with_test_ca(tmp_path: Path) -> None:
    _, ca = _server(tmp_path / "ca", self_signed=False)
    server, _ = _server(tmp_path / "bad", self_signed=True)
    with pytest.raises(ssl.SSLCertVerificationError):
        _tls_pair(server, ssl.create_default_context(cafile=str(ca)))


def test_free_ports_are_distinct() -> None:
    ports = {free_port() for _ in range(20)}
    assert len(ports) == 20


def test_wait_for_banner_times_out_on_closed_port() -> None:
    with pytest.raises(TimeoutError):
        wait_for_banner("127.0.0.1", free_port(), b"* OK", timeout=0.3)


def test_users_file_format_and_mtime(tmp_path: Path) -> None:
    users = MailUsers(tmp_path / "users", tmp_path / "mail")
    users.add("a@example.org", "one")
    first = (tmp_path / "users").stat().st_mtime
    users.add("a@example.org", "two")  # same size, same second: mtime must still move
    assert (tmp_path / "users").stat().st_mtime > first
    assert (tmp_path / "users").read_text() == "a@example.org:{PLAIN}two::::::\n"
    assert (tmp_path / "users").stat().st_mode & 0o777 == 0o644
    with pytest.raises(ValueError, match="without"):
        users.add("bad:name", "x")
    # A hosting-style login: the address's mail lands in the home the login reads.
    users.add("u1234", "pw", address="b@hosted.test")
    homes = (tmp_path / "users.userdb").read_text().splitlines()
    b_home = f"{tmp_path / 'mail'}/hosted.test/b"
    assert [
        line.split(":")[5] for line in homes if line.split(":")[0] in {"u1234", "b@hosted.test"}
    ] == [b_home, b_home]


def test_stop_without_start_is_a_no_op() -> None:
    stack = LocalStack()
    stack.stop()
    stack.stop()
    with pytest.raises(RuntimeError, match="not started"):
        _ = stack.endpoints


def _introspect(url: str, token: str) -> object:
    body = urllib.parse.urlencode({"token": token}).encode()
    with urllib.request.urlopen(url, data=body, timeout=5) as answer:  # noqa: S310 - loopback
        return json.loads(answer.read())


def test_introspection_answers_inactive_for_expired_and_unknown_tokens() -> None:
    introspection = TokenIntrospection()
    introspection.start()
    try:
        introspection.grant("live", "alice@example.org", expires_at=time.time() + 60)
        introspection.grant("expired", "alice@example.org", expires_at=time.time() - 1)
        url = introspection.url
        assert _introspect(url, "live") == {"active": True, "username": "alice@example.org"}
        assert _introspect(url, "expired") == {"active": False}
        assert _introspect(url, "unknown") == {"active": False}
    finally:
        introspection.stop()
