"""The probes against servers that misbehave on purpose (localinfra.hostile_mail): every read
is bounded and fails at once, a slow server ends at the deadline, and no detail or log line
quotes a non-mail greeting or carries the secret in any form it was sent in."""

import asyncio
import base64
import logging
import re
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from localinfra.certs import TlsFiles, make_ca_and_server_cert
from localinfra.hostile_mail import ECHO_MARK, SSH_BANNER, HostileMailServers
from mailbox_link_contract.failures import FailureCode
from mailbox_link_contract.values import ConnectionSecurity
from mailbox_link_shared.mail_probes import (
    PLAINTEXT_GREETING_WAIT,
    Endpoint,
    Probe,
    ProbeFailed,
    probe_imap,
    probe_smtp,
)
from mailbox_link_shared.mail_probes.common import (
    MAX_LINE_BYTES,
    MAX_LITERAL_BYTES,
    MAX_RESPONSE_BYTES,
    SMTP_MAX_REPLY_BYTES,
    _Credentials,
    _Mechanism,
)
from mailbox_link_shared.mail_probes.imap import _ReadBounds
from mailbox_link_shared.mail_probes.inbox import open_inbox

SSL = ConnectionSecurity.SSL
STARTTLS = ConnectionSecurity.STARTTLS
TIMEOUT = 5.0
USER = "alice@example.org"
# `"` and `\` make the IMAP-quoted form differ from the raw one.
PASSWORD = 'p"ss\\w0rd-Zq8vLr2'


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_ca_and_server_cert(tmp_path_factory.mktemp("hostile-tls"))


@pytest.fixture(scope="module")
def hostile(tls_files: TlsFiles) -> Iterator[HostileMailServers]:
    servers = HostileMailServers(tls_files.cert_file, tls_files.key_file).start()
    yield servers
    servers.stop()


def _trusting(tls_files: TlsFiles) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(tls_files.ca_file))


async def _probe(
    probe: Probe,
    hostile: HostileMailServers,
    name: str,
    security: ConnectionSecurity,
    tls_files: TlsFiles,
    timeout: float = TIMEOUT,
) -> ProbeFailed:
    endpoint = Endpoint("localhost", "127.0.0.1", hostile.ports[name], security)
    with pytest.raises(ProbeFailed) as failed:
        await probe(endpoint, USER, PASSWORD, _trusting(tls_files), timeout)
    return failed.value


def _memory_kib(field: str) -> int:
    """VmRSS or VmHWM of this process, from /proc."""
    status = Path("/proc/self/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB$", status, re.MULTILINE)
    assert match is not None
    return int(match.group(1))


def _secret_forms() -> list[str]:
    """The password in every form a probe sends it (computed here, not by the probes)."""
    escaped = PASSWORD.replace("\\", "\\\\").replace('"', '\\"')
    b64_password = base64.b64encode(PASSWORD.encode()).decode()
    return [
        PASSWORD,
        escaped,
        f'"{escaped}"',
        base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode(),
        b64_password,
        b64_password.rstrip("="),
    ]


FLOODS = [
    ("imap_endless_untagged", probe_imap, f"more than {MAX_RESPONSE_BYTES} bytes in one response"),
    ("imap_endless_line", probe_imap, f"more than {MAX_LINE_BYTES} bytes in one line"),
    ("imap_huge_literal", probe_imap, f"more than {MAX_LITERAL_BYTES} bytes in one literal"),
    ("pop3_endless_line", probe_imap, f"more than {MAX_LINE_BYTES} bytes in one line"),
    ("pop3_endless_line", probe_smtp, f"more than {SMTP_MAX_REPLY_BYTES} bytes in one reply"),
    ("smtp_endless_continuation", probe_smtp, f"more than {SMTP_MAX_REPLY_BYTES} bytes"),
]


@pytest.mark.parametrize(("name", "probe", "detail"), FLOODS)
async def test_a_flooding_server_fails_the_check_at_once(
    hostile: HostileMailServers, tls_files: TlsFiles, name: str, probe: Probe, detail: str
) -> None:
    started = time.monotonic()
    failure = await _probe(probe, hostile, name, STARTTLS, tls_files)
    elapsed = time.monotonic() - started
    code = FailureCode.NOT_AN_IMAP_SERVER if probe is probe_imap else FailureCode.NOT_AN_SMTP_SERVER
    assert failure.code is code
    assert detail in failure.detail
    assert elapsed < TIMEOUT / 2  # at once, not at the deadline (generous for a busy machine)


async def test_flooding_servers_cost_a_bounded_amount_of_memory(
    hostile: HostileMailServers, tls_files: TlsFiles
) -> None:
    """Ten checks at once per flood; before the bounds, one endless-untagged check alone
    took about 450 MB."""
    rss_before, peak_before = _memory_kib("VmRSS"), _memory_kib("VmHWM")
    checks = [
        _probe(probe, hostile, name, STARTTLS, tls_files)
        for name, probe, _detail in FLOODS
        for _ in range(10)
    ]
    failures = await asyncio.gather(*checks)
    assert all(
        f.code in {FailureCode.NOT_AN_IMAP_SERVER, FailureCode.NOT_AN_SMTP_SERVER} for f in failures
    )
    rss_after, peak_after = _memory_kib("VmRSS"), _memory_kib("VmHWM")
    print(  # the figure for the report: pytest -s
        f"\n{len(checks)} flooding checks: VmRSS {rss_before} -> {rss_after} kB, "
        f"VmHWM {peak_before} -> {peak_after} kB (+{peak_after - peak_before} kB)"
    )
    assert peak_after - peak_before < 50 * 1024


async def test_a_dripping_server_ends_at_the_deadline(
    hostile: HostileMailServers, tls_files: TlsFiles
) -> None:
    started = time.monotonic()
    failure = await _probe(probe_imap, hostile, "imap_drip", STARTTLS, tls_files, timeout=1.0)
    assert failure.code is FailureCode.TIMEOUT
    assert time.monotonic() - started < 1.0 + 2.0


@pytest.mark.parametrize("probe", [probe_imap, probe_smtp])
async def test_a_silent_port_times_out(
    hostile: HostileMailServers, tls_files: TlsFiles, probe: Probe
) -> None:
    failure = await _probe(probe, hostile, "silent", STARTTLS, tls_files, timeout=0.5)
    assert failure.code is FailureCode.TIMEOUT


@pytest.mark.parametrize(
    ("probe", "code", "detail"),
    [
        (probe_imap, FailureCode.NOT_AN_IMAP_SERVER, "not an IMAP greeting"),
        (probe_smtp, FailureCode.NOT_AN_SMTP_SERVER, "not an SMTP greeting"),
    ],
)
async def test_an_ssh_port_is_named_without_quoting_its_banner(
    hostile: HostileMailServers, tls_files: TlsFiles, probe: Probe, code: FailureCode, detail: str
) -> None:
    failure = await _probe(probe, hostile, "ssh", STARTTLS, tls_files)
    assert failure.code is code
    assert failure.detail == detail
    for word in SSH_BANNER.decode().replace("-", " ").replace("+", " ").split():
        assert word not in failure.detail


@pytest.mark.parametrize(
    ("name", "probe", "code", "detail"),
    [
        (
            "imap_echo_login",
            probe_imap,
            FailureCode.IMAP_AUTH_FAILED,
            "login rejected (NO [AUTHENTICATIONFAILED])",
        ),
        (
            "imap_echo_plain",
            probe_imap,
            FailureCode.IMAP_AUTH_FAILED,
            "login rejected (NO [AUTHENTICATIONFAILED])",
        ),
        ("smtp_echo_login", probe_smtp, FailureCode.SMTP_AUTH_FAILED, "login rejected (535 5.7.8)"),
        ("smtp_echo_plain", probe_smtp, FailureCode.SMTP_AUTH_FAILED, "login rejected (535 5.7.8)"),
    ],
)
async def test_an_echoing_server_gets_its_reply_classified_and_the_secret_stays_out(
    hostile: HostileMailServers,
    tls_files: TlsFiles,
    caplog: pytest.LogCaptureFixture,
    name: str,
    probe: Probe,
    code: FailureCode,
    detail: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    failure = await _probe(probe, hostile, name, SSL, tls_files)
    assert failure.code is code
    assert failure.detail == detail
    sent = hostile.received[name].decode("utf-8", "replace")
    assert any(form in sent for form in _secret_forms())  # the secret did cross the wire
    for form in _secret_forms():
        assert form not in failure.detail
        assert form not in str(failure)
        assert form not in caplog.text
    assert ECHO_MARK.decode() not in failure.detail


async def test_the_ownership_proof_inbox_session_is_bounded_too(
    hostile: HostileMailServers, tls_files: TlsFiles
) -> None:
    endpoint = Endpoint("localhost", "127.0.0.1", hostile.ports["imap_huge_literal"], STARTTLS)
    with pytest.raises(ProbeFailed) as failed:
        async with open_inbox(endpoint, USER, PASSWORD, _trusting(tls_files), TIMEOUT):
            pass
    assert failed.value.code is FailureCode.NOT_AN_IMAP_SERVER
    assert f"more than {MAX_LITERAL_BYTES} bytes in one literal" in failed.value.detail


def test_honest_literals_and_long_sessions_stay_within_the_bounds() -> None:
    bounds = _ReadBounds()
    # A literal's bytes (CRLFs included) are not lines; the line goes on after it.
    assert bounds.feed(b'* OK ready\r\n* ID ("name" {12}\r\nab\r\ncd\r\nefgh)\r\n') is None
    assert bounds.feed(b"A1 OK done\r\n") is None
    for _ in range(200):  # many small responses: only the total per check grows
        assert bounds.feed(b"* 3 EXISTS\r\nA2 OK " + b"n" * 4000 + b"\r\n") is None


def test_a_literal_is_refused_when_announced_even_with_an_absurd_size() -> None:
    assert "literal" in (_ReadBounds().feed(b"* X {65537}\r\n") or "")
    assert "literal" in (_ReadBounds().feed(b"* X {" + b"9" * 5000 + b"}\r\n") or "")


def test_redaction_covers_every_form_the_secret_is_sent_in() -> None:
    credentials = _Credentials(_Mechanism.PASSWORD, USER, PASSWORD)
    text = " | ".join(_secret_forms())
    assert credentials.redact(text).replace("***", "").strip(' |"') == ""
    token = _Credentials(_Mechanism.XOAUTH2, USER, "ya29.token-value")
    sent = base64.b64encode(f"user={USER}\x01auth=Bearer ya29.token-value\x01\x01".encode())
    assert token.redact(f"{sent.decode()} ya29.token-value") == "*** ***"


# --- The other-security try meets a hostile server ----------------------------------------


async def test_starttls_on_a_tls_port_that_floods_its_greeting_is_no_mismatch(
    hostile: HostileMailServers, tls_files: TlsFiles
) -> None:
    """The TLS try reads one line within MAX_LINE_BYTES: an endless one is not a greeting, so
    the plaintext wait goes on to the deadline."""
    timeout = PLAINTEXT_GREETING_WAIT + 1.0
    failure = await _probe(
        probe_imap, hostile, "imap_endless_greeting", STARTTLS, tls_files, timeout=timeout
    )
    assert failure.code is FailureCode.TIMEOUT
    assert hostile.connections["imap_endless_greeting"] == 1  # the TLS try did happen


@pytest.mark.parametrize(
    ("name", "probe"),
    [
        ("pop3_endless_line", probe_imap),  # the plaintext try's line is over the bound
        ("imap_drip", probe_imap),  # its greeting line never ends within the wait
        ("smtp_endless_continuation", probe_imap),  # a greeting, of another protocol
        ("imap_endless_line", probe_smtp),  # likewise
    ],
)
async def test_tls_on_a_hostile_plaintext_port_stays_tls_failed(
    hostile: HostileMailServers, tls_files: TlsFiles, name: str, probe: Probe
) -> None:
    failure = await _probe(probe, hostile, name, SSL, tls_files)
    assert failure.code is FailureCode.TLS_FAILED


async def test_tls_on_a_plaintext_port_with_an_imap_greeting_is_a_mismatch(
    hostile: HostileMailServers, tls_files: TlsFiles
) -> None:
    """The greeting line is all the try reads: what floods after it is never read."""
    failure = await _probe(probe_imap, hostile, "imap_endless_line", SSL, tls_files)
    assert failure.code is FailureCode.SECURITY_MISMATCH
    assert failure.detail.endswith("expects STARTTLS, not SSL/TLS: set its security to starttls")
