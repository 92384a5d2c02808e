"""Protocol adapters that prove we can really log in to a person's own IMAP and SMTP servers.

Every probe connects to an address that was vetted beforehand and never re-resolves the host name
(so DNS cannot move us onto another network between the check and the connection), while TLS is
verified against the host name the person typed. A probe logs in with a password
(`probe_imap`, `probe_smtp`) or with an OAuth access token over XOAUTH2 (`probe_imap_xoauth2`,
`probe_smtp_xoauth2`); all four share the `Probe` signature. A probe either returns None or
raises ProbeFailed with a FailureCode and a short detail; the password or token never appears in
a detail, a log line or a chained exception, in any form it was sent in.

A user-typed server is untrusted: every read is bounded (line, response, literal, connection;
`common.MAX_*`) and a server over a bound fails the check at once; a detail is built from what
was classified (status, known response or reply codes), never by quoting the server.
"""

import ssl

from mailbox_link_shared.mail_probes.common import (
    Endpoint,
    Probe,
    ProbeFailed,
    _Credentials,
    _drive,
    _Mechanism,
)
from mailbox_link_shared.mail_probes.imap import _ImapProbe
from mailbox_link_shared.mail_probes.smtp import _SmtpProbe

__all__ = [
    "Endpoint",
    "Probe",
    "ProbeFailed",
    "probe_imap",
    "probe_imap_xoauth2",
    "probe_smtp",
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
    await _drive(_ImapProbe, endpoint, credentials, tls, timeout)


async def probe_smtp(
    endpoint: Endpoint,
    username: str,
    password: str,
    tls: ssl.SSLContext,
    timeout: float,
) -> None:
    """Authenticates to an SMTP submission server; raises ProbeFailed on any failure."""
    credentials = _Credentials(_Mechanism.PASSWORD, username, password)
    await _drive(_SmtpProbe, endpoint, credentials, tls, timeout)


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
    await _drive(_ImapProbe, endpoint, credentials, tls, timeout)


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
    await _drive(_SmtpProbe, endpoint, credentials, tls, timeout)
