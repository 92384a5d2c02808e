"""The IMAP and SMTP probes against real Dovecot servers: every outcome is an exact FailureCode."""

import asyncio
import base64
import contextlib
import logging
import secrets
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Protocol

import pytest

from localinfra.stack import LocalStack
from mailbox_link_contract.failures import FailureCode
from mailbox_link_contract.values import ConnectionSecurity
from mailbox_link_shared.mail_probes import (
    PLAINTEXT_GREETING_WAIT,
    TOKEN_PROBES,
    Endpoint,
    Probe,
    ProbeFailed,
    probe_imap,
    probe_imap_oauthbearer,
    probe_imap_xoauth2,
    probe_smtp,
    probe_smtp_oauthbearer,
    probe_smtp_xoauth2,
)
from mailbox_link_shared.mail_probes import imap as imap_probe

SSL = ConnectionSecurity.SSL
STARTTLS = ConnectionSecurity.STARTTLS
TIMEOUT = 5.0


class MailServers(Protocol):
    """What the tests need from the `mail_servers` fixture, whoever provides it."""

    @property
    def host(self) -> str: ...
    @property
    def tls_hostname(self) -> str: ...
    @property
    def imaps_port(self) -> int: ...
    @property
    def imap_starttls_port(self) -> int: ...
    @property
    def submission_starttls_port(self) -> int: ...
    @property
    def submissions_port(self) -> int: ...
    @property
    def pop3_port(self) -> int: ...
    @property
    def untrusted_imaps_port(self) -> int: ...
    @property
    def closed_port(self) -> int: ...
    @property
    def oauth_imaps_port(self) -> int: ...
    @property
    def oauth_submissions_port(self) -> int: ...
    @property
    def ca_file(self) -> Path: ...
    @property
    def user(self) -> str: ...
    @property
    def password(self) -> str: ...


def _at(servers: MailServers, port: int, security: ConnectionSecurity) -> Endpoint:
    return Endpoint(servers.tls_hostname, servers.host, port, security)


def _trusting(servers: MailServers) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(servers.ca_file))


async def _imap(servers: MailServers, port: int, security: ConnectionSecurity, **kw: str) -> None:
    password = kw.get("password", servers.password)
    endpoint = _at(servers, port, security)
    await probe_imap(endpoint, servers.user, password, _trusting(servers), TIMEOUT)


async def _smtp(servers: MailServers, port: int, security: ConnectionSecurity, **kw: str) -> None:
    password = kw.get("password", servers.password)
    endpoint = _at(servers, port, security)
    await probe_smtp(endpoint, servers.user, password, _trusting(servers), TIMEOUT)


Script = Callable[[bytes], bytes]


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[[bytes, Script], Awaitable[int]]]:
    """Starts fake servers that send a greeting, then answer lines by script.

    An empty greeting hangs up at once; a reply containing `* BYE` hangs up after it.
    """
    servers: list[asyncio.Server] = []

    async def start(greeting: bytes, script: Script) -> int:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                writer.write(greeting)
                while greeting and (line := await reader.readline()):
                    reply = script(line)
                    writer.write(reply)
                    if b"* BYE" in reply:
                        break
            except ConnectionError:
                pass  # the probe hung up first
            finally:
                writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        servers.append(server)
        port: int = server.sockets[0].getsockname()[1]
        return port

    yield start
    for server in servers:
        server.close()


def _imap_without_starttls(line: bytes) -> bytes:
    tag = line.split(b" ", 1)[0]
    return b"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n" + tag + b" OK done\r\n"


def _imap_refusing_starttls(line: bytes) -> bytes:
    tag, _, command = line.rstrip().partition(b" ")
    if command == b"STARTTLS":  # refuses, and hangs up straight after the refusal
        return b"* BYE shutting down\r\n" + tag + b" NO [UNAVAILABLE] try later\r\n"
    return b"* CAPABILITY IMAP4rev1 STARTTLS\r\n" + tag + b" OK done\r\n"


def _smtp_without_starttls(line: bytes) -> bytes:
    return b"250-fake.example\r\n250 AUTH PLAIN\r\n" if line.startswith(b"EHLO") else b"221 bye\r\n"


@pytest.fixture
async def silent_port() -> AsyncIterator[int]:
    """A server that accepts connections and never says a word (and runs no tasks)."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


async def test_imaps_logs_in(mail_servers: MailServers) -> None:
    await _imap(mail_servers, mail_servers.imaps_port, SSL)


async def test_imap_starttls_logs_in(mail_servers: MailServers) -> None:
    await _imap(mail_servers, mail_servers.imap_starttls_port, STARTTLS)


@pytest.mark.parametrize("security", [SSL, STARTTLS])
async def test_imap_wrong_password(mail_servers: MailServers, security: ConnectionSecurity) -> None:
    port = mail_servers.imaps_port if security is SSL else mail_servers.imap_starttls_port
    with pytest.raises(ProbeFailed) as failed:
        await _imap(mail_servers, port, security, password="not the password")
    assert failed.value.code is FailureCode.IMAP_AUTH_FAILED
    assert "AUTHENTICATIONFAILED" in failed.value.detail
    assert "not the password" not in str(failed.value)


async def test_pop3_port_is_pop3_only(mail_servers: MailServers) -> None:
    with pytest.raises(ProbeFailed) as failed:
        await _imap(mail_servers, mail_servers.pop3_port, STARTTLS)
    assert failed.value.code is FailureCode.POP3_ONLY


async def test_smtp_port_is_not_imap(mail_servers: MailServers) -> None:
    with pytest.raises(ProbeFailed) as failed:
        await _imap(mail_servers, mail_servers.submissions_port, SSL)
    assert failed.value.code is FailureCode.NOT_AN_IMAP_SERVER
    assert "SMTP" in failed.value.detail


@pytest.mark.parametrize("security", [SSL, STARTTLS])
async def test_imap_closed_port(mail_servers: MailServers, security: ConnectionSecurity) -> None:
    with pytest.raises(ProbeFailed) as failed:
        await _imap(mail_servers, mail_servers.closed_port, security)
    assert failed.value.code is FailureCode.IMAP_UNREACHABLE


async def test_imap_untrusted_certificate(mail_servers: MailServers) -> None:
    with pytest.raises(ProbeFailed) as failed:
        await _imap(mail_servers, mail_servers.untrusted_imaps_port, SSL)
    assert failed.value.code is FailureCode.TLS_FAILED
    assert failed.value.detail.startswith("certificate not trusted")


async def test_imap_certificate_for_another_name(mail_servers: MailServers) -> None:
    endpoint = Endpoint("mail.example.test", "127.0.0.1", mail_servers.imaps_port, SSL)
    with pytest.raises(ProbeFailed) as failed:
        await probe_imap(
            endpoint, mail_servers.user, mail_servers.password, _trusting(mail_servers), TIMEOUT
        )
    assert failed.value.code is FailureCode.TLS_FAILED


async def test_smtp_submissions_logs_in(mail_servers: MailServers) -> None:
    await _smtp(mail_servers, mail_servers.submissions_port, SSL)


async def test_smtp_starttls_logs_in(mail_servers: MailServers) -> None:
    await _smtp(mail_servers, mail_servers.submission_starttls_port, STARTTLS)


@pytest.mark.parametrize("security", [SSL, STARTTLS])
async def test_smtp_wrong_password(mail_servers: MailServers, security: ConnectionSecurity) -> None:
    port = (
        mail_servers.submissions_port if security is SSL else mail_servers.submission_starttls_port
    )
    with pytest.raises(ProbeFailed) as failed:
        await _smtp(mail_servers, port, security, password="not the password")
    assert failed.value.code is FailureCode.SMTP_AUTH_FAILED
    assert "535" in failed.value.detail
    assert "not the password" not in str(failed.value)


async def test_smtp_on_pop3_port(mail_servers: MailServers) -> None:
    with pytest.raises(ProbeFailed) as failed:
        await _smtp(mail_servers, mail_servers.pop3_port, STARTTLS)
    assert failed.value.code is FailureCode.NOT_AN_SMTP_SERVER
    assert failed.value.detail == "this is a POP3 port"


async def test_smtp_on_imap_port(mail_servers: MailServers) -> None:
    with pytest.raises(ProbeFailed) as failed:
        await _smtp(mail_servers, mail_servers.imaps_port, SSL)
    assert failed.value.code is FailureCode.NOT_AN_SMTP_SERVER
    assert failed.value.detail == "this is an IMAP port"


async def test_smtp_closed_port(mail_servers: MailServers) -> None:
    with pytest.raises(ProbeFailed) as failed:
        await _smtp(mail_servers, mail_servers.closed_port, SSL)
    assert failed.value.code is FailureCode.SMTP_UNREACHABLE


async def test_smtp_untrusted_certificate(mail_servers: MailServers) -> None:
    with pytest.raises(ProbeFailed) as failed:
        await _smtp(mail_servers, mail_servers.untrusted_imaps_port, SSL)
    assert failed.value.code is FailureCode.TLS_FAILED
    assert failed.value.detail.startswith("certificate not trusted")


# --- Security chosen wrong for the port -------------------------------------------------


def _ports(servers: MailServers) -> dict[str, int]:
    return {
        "imaps": servers.imaps_port,
        "imap-starttls": servers.imap_starttls_port,
        "submissions": servers.submissions_port,
        "submission-starttls": servers.submission_starttls_port,
    }


@pytest.mark.parametrize(
    ("kind", "listener", "typed", "works"),
    [
        ("IMAP", "imaps", STARTTLS, SSL),
        ("SMTP", "submissions", STARTTLS, SSL),
        ("IMAP", "imap-starttls", SSL, STARTTLS),
        ("SMTP", "submission-starttls", SSL, STARTTLS),
    ],
)
async def test_security_chosen_wrong_for_the_port_names_the_one_that_works(
    mail_servers: MailServers,
    kind: str,
    listener: str,
    typed: ConnectionSecurity,
    works: ConnectionSecurity,
) -> None:
    port = _ports(mail_servers)[listener]
    check = _imap if kind == "IMAP" else _smtp
    with pytest.raises(ProbeFailed) as failed:
        await check(mail_servers, port, typed)
    words = {SSL: "SSL/TLS", STARTTLS: "STARTTLS"}
    assert failed.value.code is FailureCode.SECURITY_MISMATCH
    assert failed.value.detail == (
        f"{kind} port {port} expects {words[works]}, not {words[typed]}: "
        f"set its security to {works.value}"
    )


async def test_starttls_on_a_tls_port_with_an_untrusted_certificate_says_both(
    mail_servers: MailServers,
) -> None:
    with pytest.raises(ProbeFailed) as failed:
        await _imap(mail_servers, mail_servers.untrusted_imaps_port, STARTTLS)
    assert failed.value.code is FailureCode.SECURITY_MISMATCH
    assert failed.value.detail.endswith("(its certificate did not verify either)")


@pytest.mark.parametrize(
    ("kind", "listener"), [("IMAP", "submission-starttls"), ("SMTP", "imap-starttls")]
)
async def test_tls_on_a_plaintext_port_of_another_protocol_stays_tls_failed(
    mail_servers: MailServers, kind: str, listener: str
) -> None:
    """Only a greeting of the probe's own protocol makes it a security mistake."""
    check = _imap if kind == "IMAP" else _smtp
    with pytest.raises(ProbeFailed) as failed:
        await check(mail_servers, _ports(mail_servers)[listener], SSL)
    assert failed.value.code is FailureCode.TLS_FAILED
    assert "STARTTLS port" in failed.value.detail


@pytest.mark.parametrize("probe", [probe_imap, probe_smtp])
async def test_starttls_on_a_silent_port_still_times_out(
    mail_servers: MailServers, silent_port: int, probe: Probe
) -> None:
    """The TLS try on a port that says nothing at all finds nothing: the wait goes on."""
    endpoint = _at(mail_servers, silent_port, STARTTLS)
    with pytest.raises(ProbeFailed) as failed:
        await probe(endpoint, "u", "p", _trusting(mail_servers), PLAINTEXT_GREETING_WAIT + 1.0)
    assert failed.value.code is FailureCode.TIMEOUT


@pytest.mark.parametrize("probe", [probe_imap, probe_smtp])
@pytest.mark.parametrize("security", [SSL, STARTTLS])
async def test_silent_server_times_out_within_the_bound(
    mail_servers: MailServers, silent_port: int, probe: object, security: ConnectionSecurity
) -> None:
    assert probe is probe_imap or probe is probe_smtp
    endpoint = _at(mail_servers, silent_port, security)
    tasks_before = asyncio.all_tasks()
    started = time.monotonic()
    with pytest.raises(ProbeFailed) as failed:
        await probe(endpoint, "u", "p", _trusting(mail_servers), 0.5)
    elapsed = time.monotonic() - started
    assert failed.value.code is FailureCode.TIMEOUT
    # Generous slack for a loaded machine: this checks the probe gives up, not how fast.
    assert elapsed < 0.5 + 2.0
    await asyncio.sleep(0)  # let cancelled helpers finish
    assert asyncio.all_tasks() <= tasks_before


@pytest.mark.parametrize(
    ("greeting", "code"),
    [
        (b"* BYE Too many connections\r\n", FailureCode.IMAP_UNREACHABLE),
        (b"SSH-2.0-OpenSSH_9.2\r\n", FailureCode.NOT_AN_IMAP_SERVER),
        (b"", FailureCode.IMAP_UNREACHABLE),
    ],
)
async def test_imap_greetings(
    mail_servers: MailServers,
    scripted: Callable[[bytes, Script], Awaitable[int]],
    greeting: bytes,
    code: FailureCode,
) -> None:
    port = await scripted(greeting, lambda _line: b"")
    with pytest.raises(ProbeFailed) as failed:
        await _imap(mail_servers, port, STARTTLS)
    assert failed.value.code is code


async def test_imap_without_starttls(
    mail_servers: MailServers, scripted: Callable[[bytes, Script], Awaitable[int]]
) -> None:
    port = await scripted(b"* OK fake\r\n", _imap_without_starttls)
    with pytest.raises(ProbeFailed) as failed:
        await _imap(mail_servers, port, STARTTLS)
    assert failed.value.code is FailureCode.TLS_FAILED
    assert failed.value.detail == "server does not offer STARTTLS"


async def test_imap_preauth_before_starttls(
    mail_servers: MailServers, scripted: Callable[[bytes, Script], Awaitable[int]]
) -> None:
    port = await scripted(b"* PREAUTH welcome back\r\n", _imap_refusing_starttls)
    with pytest.raises(ProbeFailed) as failed:
        await _imap(mail_servers, port, STARTTLS)
    assert failed.value.code is FailureCode.TLS_FAILED
    assert "PREAUTH" in failed.value.detail


async def test_imap_reply_just_before_hang_up_counts(
    mail_servers: MailServers, scripted: Callable[[bytes, Script], Awaitable[int]]
) -> None:
    port = await scripted(b"* OK fake\r\n", _imap_refusing_starttls)
    with pytest.raises(ProbeFailed) as failed:
        await _imap(mail_servers, port, STARTTLS)
    assert failed.value.code is FailureCode.TLS_FAILED
    assert failed.value.detail == "STARTTLS refused (NO [UNAVAILABLE])"


async def test_smtp_without_starttls(
    mail_servers: MailServers, scripted: Callable[[bytes, Script], Awaitable[int]]
) -> None:
    port = await scripted(b"220 fake ESMTP\r\n", _smtp_without_starttls)
    with pytest.raises(ProbeFailed) as failed:
        await _smtp(mail_servers, port, STARTTLS)
    assert failed.value.code is FailureCode.TLS_FAILED
    assert failed.value.detail == "server does not offer STARTTLS"


def _pretend_capabilities(
    monkeypatch: pytest.MonkeyPatch, *, hide: set[str], add: frozenset[str] = frozenset()
) -> None:
    """Dovecot always offers SASL-IR and LOGIN; this makes the IMAP probe see otherwise."""
    offered = imap_probe._ImapProbe._capabilities
    monkeypatch.setattr(
        imap_probe._ImapProbe, "_capabilities", lambda self: (offered(self) - hide) | add
    )


# Which way the password probe logs in when Dovecot's capabilities are pretended otherwise.
PASSWORD_LOGINS = {
    "plain-with-sasl-ir": (set(), frozenset()),
    "login": ({"SASL-IR"}, frozenset()),
    "plain-after-challenge": ({"SASL-IR"}, frozenset({"LOGINDISABLED"})),
}


@pytest.mark.parametrize("login", PASSWORD_LOGINS)
async def test_every_password_login_works(
    mail_servers: MailServers, monkeypatch: pytest.MonkeyPatch, login: str
) -> None:
    hide, add = PASSWORD_LOGINS[login]
    _pretend_capabilities(monkeypatch, hide=hide, add=add)
    await _imap(mail_servers, mail_servers.imaps_port, SSL)


@pytest.mark.parametrize("login", PASSWORD_LOGINS)
@pytest.mark.parametrize("right_password", [True, False])
async def test_password_never_logged(
    mail_servers: MailServers,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    login: str,
    right_password: bool,
) -> None:
    hide, add = PASSWORD_LOGINS[login]
    _pretend_capabilities(monkeypatch, hide=hide, add=add)
    password = mail_servers.password if right_password else 'wr"ong \\ pässword'
    caplog.set_level(logging.DEBUG)
    # The probes keep aioimaplib at WARNING; its scrubbing is proven with its wire log on.
    caplog.set_level(logging.DEBUG, logger="aioimaplib")
    for port, security in (
        (mail_servers.imaps_port, SSL),
        (mail_servers.imap_starttls_port, STARTTLS),
    ):
        with contextlib.suppress(ProbeFailed):
            await _imap(mail_servers, port, security, password=password)
    with contextlib.suppress(ProbeFailed):
        await _smtp(mail_servers, mail_servers.submissions_port, SSL, password=password)
    plain = base64.b64encode(f"\0{mail_servers.user}\0{password}".encode()).decode()
    escaped = password.replace("\\", "\\\\").replace('"', '\\"')
    assert "Sending" in caplog.text  # aioimaplib's wire log was really captured
    for secret in (password, plain, escaped):
        assert secret not in caplog.text


# --- XOAUTH2 -----------------------------------------------------------------------------

XOAUTH2_PROBES = [probe_imap_xoauth2, probe_smtp_xoauth2]


@pytest.fixture
def oauth_token(local_stack: LocalStack, mail_servers: MailServers) -> Iterator[str]:
    """An access token the OAuth Dovecot accepts for the test user."""
    token = secrets.token_urlsafe(24)
    local_stack.grant_oauth_token(token, mail_servers.user)
    yield token
    local_stack.revoke_oauth_token(token)


async def _probe(servers: MailServers, probe: Probe, secret: str, *, oauth: bool = True) -> None:
    """Runs `probe` over implicit TLS against the OAuth Dovecot, or the password one."""
    imap = probe in (probe_imap, probe_imap_xoauth2, probe_imap_oauthbearer)
    if oauth:
        port = servers.oauth_imaps_port if imap else servers.oauth_submissions_port
    else:
        port = servers.imaps_port if imap else servers.submissions_port
    await probe(_at(servers, port, SSL), servers.user, secret, _trusting(servers), TIMEOUT)


def _xoauth2_response(user: str, token: str) -> str:
    return base64.b64encode(f"user={user}\x01auth=Bearer {token}\x01\x01".encode()).decode()


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    """The exception and every one it was raised from or while handling, even suppressed."""
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


@pytest.mark.parametrize("probe", XOAUTH2_PROBES)
async def test_xoauth2_logs_in_with_a_granted_token(
    mail_servers: MailServers, oauth_token: str, probe: Probe
) -> None:
    await _probe(mail_servers, probe, oauth_token)


@pytest.mark.parametrize(
    ("probe", "code", "reason"),
    [
        (probe_imap_xoauth2, FailureCode.IMAP_AUTH_FAILED, "AUTHENTICATIONFAILED"),
        (probe_smtp_xoauth2, FailureCode.SMTP_AUTH_FAILED, "535"),
    ],
)
@pytest.mark.parametrize("revoked", [False, True])
async def test_xoauth2_refused_token_fails_fast_and_stays_secret(
    mail_servers: MailServers,
    local_stack: LocalStack,
    oauth_token: str,
    probe: Probe,
    code: FailureCode,
    reason: str,
    revoked: bool,
) -> None:
    token = oauth_token if revoked else secrets.token_urlsafe(24)
    local_stack.revoke_oauth_token(token)
    started = time.monotonic()
    with pytest.raises(ProbeFailed) as failed:
        await _probe(mail_servers, probe, token)
    # The server's error challenge was answered, so the refusal came long before the deadline.
    assert time.monotonic() - started < TIMEOUT / 2
    assert failed.value.code is code
    assert failed.value.detail.startswith("login rejected (")
    assert reason in failed.value.detail
    secrets_sent = (token, _xoauth2_response(mail_servers.user, token))
    for exc in _chain(failed.value):
        for secret in secrets_sent:
            assert secret not in str(exc)
            assert secret not in repr(exc)


async def test_imap_xoauth2_without_sasl_ir_answers_the_first_challenge(
    mail_servers: MailServers, oauth_token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _pretend_capabilities(monkeypatch, hide={"SASL-IR"})
    await _probe(mail_servers, probe_imap_xoauth2, oauth_token)
    started = time.monotonic()
    with pytest.raises(ProbeFailed) as failed:
        await _probe(mail_servers, probe_imap_xoauth2, "not-a-token")
    assert time.monotonic() - started < TIMEOUT / 2
    assert failed.value.code is FailureCode.IMAP_AUTH_FAILED
    assert "AUTHENTICATIONFAILED" in failed.value.detail


@pytest.mark.parametrize(
    ("probe", "code"),
    [(probe_imap, FailureCode.IMAP_AUTH_FAILED), (probe_smtp, FailureCode.SMTP_AUTH_FAILED)],
)
async def test_password_probe_on_the_oauth_server(
    mail_servers: MailServers, probe: Probe, code: FailureCode
) -> None:
    with pytest.raises(ProbeFailed) as failed:
        await _probe(mail_servers, probe, mail_servers.password)
    assert failed.value.code is code
    assert failed.value.detail == (
        "server does not offer password login (it offers OAUTHBEARER XOAUTH2)"
    )


@pytest.mark.parametrize(
    ("probe", "code"),
    [
        (probe_imap_xoauth2, FailureCode.IMAP_AUTH_FAILED),
        (probe_smtp_xoauth2, FailureCode.SMTP_AUTH_FAILED),
    ],
)
async def test_xoauth2_probe_on_a_password_server(
    mail_servers: MailServers, oauth_token: str, probe: Probe, code: FailureCode
) -> None:
    with pytest.raises(ProbeFailed) as failed:
        await _probe(mail_servers, probe, oauth_token, oauth=False)
    assert failed.value.code is code
    assert failed.value.detail.startswith("server does not offer XOAUTH2 (it offers ")


@pytest.mark.parametrize("sasl_ir", [True, False])
@pytest.mark.parametrize("granted", [True, False])
async def test_token_never_logged(
    mail_servers: MailServers,
    oauth_token: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    sasl_ir: bool,
    granted: bool,
) -> None:
    if not sasl_ir:
        _pretend_capabilities(monkeypatch, hide={"SASL-IR"})
    token = oauth_token if granted else secrets.token_urlsafe(24)
    caplog.set_level(logging.DEBUG)
    # The probes keep aioimaplib at WARNING; its scrubbing is proven with its wire log on.
    caplog.set_level(logging.DEBUG, logger="aioimaplib")
    for probes in TOKEN_PROBES.values():
        for probe in (probes.imap, probes.smtp):
            with contextlib.suppress(ProbeFailed):
                await _probe(mail_servers, probe, token)
    assert "Sending" in caplog.text  # aioimaplib's wire log was really captured
    for secret in _token_wire_forms(mail_servers, token):
        assert secret not in caplog.text


def _oauthbearer_response(servers: MailServers, port: int, token: str) -> str:
    """RFC 7628's client response, written out independently of the probe's code."""
    user = servers.user.replace("=", "=3D").replace(",", "=2C")
    raw = (
        f"n,a={user},\x01host={servers.tls_hostname}\x01port={port}\x01auth=Bearer {token}\x01\x01"
    )
    return base64.b64encode(raw.encode()).decode()


def _token_wire_forms(servers: MailServers, token: str) -> list[str]:
    """The token as any token probe sends it to the OAuth Dovecot."""
    return [
        token,
        _xoauth2_response(servers.user, token),
        _oauthbearer_response(servers, servers.oauth_imaps_port, token),
        _oauthbearer_response(servers, servers.oauth_submissions_port, token),
    ]


# --- OAUTHBEARER (RFC 7628) --------------------------------------------------------------

OAUTHBEARER_PROBES = [probe_imap_oauthbearer, probe_smtp_oauthbearer]


@pytest.mark.parametrize("probe", OAUTHBEARER_PROBES)
async def test_oauthbearer_logs_in_with_a_granted_token(
    mail_servers: MailServers, oauth_token: str, probe: Probe
) -> None:
    await _probe(mail_servers, probe, oauth_token)


@pytest.mark.parametrize(
    ("probe", "code", "reason"),
    [
        (probe_imap_oauthbearer, FailureCode.IMAP_AUTH_FAILED, "AUTHENTICATIONFAILED"),
        (probe_smtp_oauthbearer, FailureCode.SMTP_AUTH_FAILED, "535"),
    ],
)
@pytest.mark.parametrize("sasl_ir", [True, False])
async def test_oauthbearer_refused_token_is_refused_and_stays_secret(
    mail_servers: MailServers,
    local_stack: LocalStack,
    monkeypatch: pytest.MonkeyPatch,
    probe: Probe,
    code: FailureCode,
    reason: str,
    sasl_ir: bool,
) -> None:
    """The error challenge is answered with %x01, so the refusal comes (long before the
    deadline: a hang would end in `timeout` instead), and no form of the token leaks."""
    if not sasl_ir:
        _pretend_capabilities(monkeypatch, hide={"SASL-IR"})
    token = secrets.token_urlsafe(24)
    local_stack.revoke_oauth_token(token)
    with pytest.raises(ProbeFailed) as failed:
        await _probe(mail_servers, probe, token)
    assert failed.value.code is code
    assert failed.value.detail.startswith("login rejected (")
    assert reason in failed.value.detail
    for exc in _chain(failed.value):
        for secret in _token_wire_forms(mail_servers, token):
            assert secret not in str(exc)
            assert secret not in repr(exc)


@pytest.mark.parametrize(
    ("probe", "code"),
    [
        (probe_imap_oauthbearer, FailureCode.IMAP_AUTH_FAILED),
        (probe_smtp_oauthbearer, FailureCode.SMTP_AUTH_FAILED),
    ],
)
async def test_oauthbearer_probe_on_a_password_server(
    mail_servers: MailServers, oauth_token: str, probe: Probe, code: FailureCode
) -> None:
    with pytest.raises(ProbeFailed) as failed:
        await _probe(mail_servers, probe, oauth_token, oauth=False)
    assert failed.value.code is code
    assert failed.value.detail.startswith("server does not offer OAUTHBEARER (it offers ")


def test_token_probes_name_each_mechanism_s_pair() -> None:
    assert TOKEN_PROBES["XOAUTH2"].imap is probe_imap_xoauth2
    assert TOKEN_PROBES["XOAUTH2"].smtp is probe_smtp_xoauth2
    assert TOKEN_PROBES["OAUTHBEARER"].imap is probe_imap_oauthbearer
    assert TOKEN_PROBES["OAUTHBEARER"].smtp is probe_smtp_oauthbearer
