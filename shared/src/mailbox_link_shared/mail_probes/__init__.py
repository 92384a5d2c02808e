"""Protocol adapters that prove we can really log in to a person's own IMAP and SMTP servers.

Every probe connects to an address that was vetted beforehand and never re-resolves the host name
(so DNS cannot move us onto another network between the check and the connection), while TLS is
verified against the host name the person typed. A probe logs in with a password
(`probe_imap`, `probe_smtp`) or with an OAuth access token over XOAUTH2 (`probe_imap_xoauth2`,
`probe_smtp_xoauth2`) or OAUTHBEARER, RFC 7628 (`probe_imap_oauthbearer`,
`probe_smtp_oauthbearer`); all six share the `Probe` signature, and `TOKEN_PROBES` names the
token ones by mechanism. A probe either returns None or raises ProbeFailed with a FailureCode
and a short detail; the password or token never appears in a detail, a log line or a chained
exception, in any form it was sent in.

Security chosen wrong for the port ends in SECURITY_MISMATCH, naming the setting that works:
STARTTLS on an implicit-TLS port (no plaintext greeting within PLAINTEXT_GREETING_WAIT, but a
TLS handshake and the protocol's greeting on the same port), or SSL/TLS on a plaintext port
(the handshake breaks, but the same port greets in plaintext). Those tries connect to the same
vetted address and port, read one bounded line and log in nowhere.

A user-typed server is untrusted: every read is bounded (line, response, literal, connection;
`common.MAX_*`) and a server over a bound fails the check at once; a detail is built from what
was classified (status, known response or reply codes), never by quoting the server.
"""

import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from opentelemetry.trace import Status, StatusCode

from mailbox_link_shared.mail_probes.common import (
    PLAINTEXT_GREETING_WAIT,
    Endpoint,
    Probe,
    ProbeFailed,
    _Credentials,
    _drive,
    _Mechanism,
    _Probe,
)
from mailbox_link_shared.mail_probes.imap import _ImapProbe
from mailbox_link_shared.mail_probes.smtp import _SmtpProbe
from mailbox_link_shared.tracing import span

__all__ = [
    "PLAINTEXT_GREETING_WAIT",
    "TOKEN_PROBES",
    "Endpoint",
    "Probe",
    "ProbeFailed",
    "TokenProbes",
    "probe_imap",
    "probe_imap_oauthbearer",
    "probe_imap_xoauth2",
    "probe_smtp",
    "probe_smtp_oauthbearer",
    "probe_smtp_xoauth2",
]


async def probe_imap(
    endpoint: Endpoint,
    username: str,
    password: str,
    tls: ssl.SSLContext,
    timeout: float,
) -> None:
    """Logs in over IMAP and opens INBOX read-only; raises ProbeFailed on any failure."""
    credentials = _Credentials(_Mechanism.PASSWORD, username, password)
    await _checked("imap", _ImapProbe, endpoint, credentials, tls, timeout)


async def probe_smtp(
    endpoint: Endpoint,
    username: str,
    password: str,
    tls: ssl.SSLContext,
    timeout: float,
) -> None:
    """Authenticates to an SMTP submission server; raises ProbeFailed on any failure."""
    credentials = _Credentials(_Mechanism.PASSWORD, username, password)
    await _checked("smtp", _SmtpProbe, endpoint, credentials, tls, timeout)


async def probe_imap_xoauth2(
    endpoint: Endpoint,
    username: str,
    access_token: str,
    tls: ssl.SSLContext,
    timeout: float,
) -> None:
    """Logs in over IMAP with an OAuth access token (AUTHENTICATE XOAUTH2) and opens INBOX
    read-only; raises ProbeFailed on any failure."""
    credentials = _Credentials(_Mechanism.XOAUTH2, username, access_token)
    await _checked("imap", _ImapProbe, endpoint, credentials, tls, timeout)


async def probe_smtp_xoauth2(
    endpoint: Endpoint,
    username: str,
    access_token: str,
    tls: ssl.SSLContext,
    timeout: float,
) -> None:
    """Authenticates to an SMTP submission server with an OAuth access token (AUTH XOAUTH2);
    raises ProbeFailed on any failure."""
    credentials = _Credentials(_Mechanism.XOAUTH2, username, access_token)
    await _checked("smtp", _SmtpProbe, endpoint, credentials, tls, timeout)


async def probe_imap_oauthbearer(
    endpoint: Endpoint,
    username: str,
    access_token: str,
    tls: ssl.SSLContext,
    timeout: float,
) -> None:
    """Logs in over IMAP with an OAuth access token (AUTHENTICATE OAUTHBEARER, RFC 7628, naming
    the endpoint's host name and port) and opens INBOX read-only; raises ProbeFailed on any
    failure."""
    credentials = _token_credentials(_Mechanism.OAUTHBEARER, endpoint, username, access_token)
    await _checked("imap", _ImapProbe, endpoint, credentials, tls, timeout)


async def probe_smtp_oauthbearer(
    endpoint: Endpoint,
    username: str,
    access_token: str,
    tls: ssl.SSLContext,
    timeout: float,
) -> None:
    """Authenticates to an SMTP submission server with an OAuth access token (AUTH OAUTHBEARER,
    RFC 7628); raises ProbeFailed on any failure."""
    credentials = _token_credentials(_Mechanism.OAUTHBEARER, endpoint, username, access_token)
    await _checked("smtp", _SmtpProbe, endpoint, credentials, tls, timeout)


async def _checked(
    protocol: str,
    make: Callable[[Endpoint, _Credentials, ssl.SSLContext], _Probe],
    endpoint: Endpoint,
    credentials: _Credentials,
    tls: ssl.SSLContext,
    timeout: float,
) -> None:
    """Runs one probe in a span `<protocol> check` with the protocol, port, security, login
    mechanism and result (ok or the failure code): never the host (the user's server), the
    username or the secret."""
    attributes = {
        "mail.protocol": protocol,
        "server.port": endpoint.port,
        "mail.security": str(endpoint.security),
        "mail.mechanism": credentials.mechanism.name.lower(),
    }
    with span(f"{protocol} check", attributes=attributes) as current:
        try:
            await _drive(make, endpoint, credentials, tls, timeout)
        except ProbeFailed as failure:
            current.set_attribute("mail.result", str(failure.code))
            current.set_status(Status(StatusCode.ERROR, str(failure.code)))
            raise
        current.set_attribute("mail.result", "ok")


def _token_credentials(
    mechanism: _Mechanism, endpoint: Endpoint, username: str, access_token: str
) -> _Credentials:
    return _Credentials(mechanism, username, access_token, endpoint.hostname, endpoint.port)


@dataclass(frozen=True)
class TokenProbes:
    """The IMAP and SMTP probes of one SASL mechanism for OAuth access tokens."""

    imap: Probe
    smtp: Probe


# By SASL mechanism name, as a provider's configuration may name it.
TOKEN_PROBES: Final = {
    "XOAUTH2": TokenProbes(probe_imap_xoauth2, probe_smtp_xoauth2),
    "OAUTHBEARER": TokenProbes(probe_imap_oauthbearer, probe_smtp_oauthbearer),
}
