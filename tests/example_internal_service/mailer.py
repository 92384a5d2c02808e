"""Sending through a linked mailbox's SMTP and finding the message over its IMAP, with what
the registry handed out: an independent mail implementation (Python's smtplib and imaplib,
not the verifiers' aiosmtplib/aioimaplib probes), so the proof does not share their bugs.

TLS is always verified, against `ca_file`, for the host named in the access answer (the
connection may go to another address, `connect_to`, as tests do with loopback). Blocking
calls run in a thread (asyncio.to_thread) and every step is bounded by a timeout.
"""

import asyncio
import base64
import imaplib
import smtplib
import socket
import ssl
import time
import uuid
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from mailbox_link_contract.values import ConnectionSecurity

from . import sasl
from .access import MailboxAccess, MailServer

TIMEOUT = 10.0


class MailLoginRefused(Exception):
    """The server refused the credentials (SMTP 535, IMAP NO)."""


@dataclass(frozen=True)
class SentMessage:
    """What was sent: enough to find it again."""

    message_id: str  # with its angle brackets, as in the header
    subject: str
    to: str


@dataclass(frozen=True)
class FoundMessage:
    """A message found in INBOX by its Message-ID."""

    uid: str
    message_id: str
    subject: str


async def send_message(
    access: MailboxAccess,
    ca_file: str,
    *,
    to: str | None = None,
    subject: str | None = None,
    connect_to: str | None = None,
    timeout: float = TIMEOUT,
) -> SentMessage:
    """Sends a short message from the mailbox (to itself by default) with a unique
    Message-ID; returns once the server accepted it."""
    return await asyncio.to_thread(
        send_message_blocking, access, ca_file, to, subject, connect_to, timeout
    )


async def find_message(
    access: MailboxAccess,
    ca_file: str,
    message_id: str,
    *,
    within: float = 20.0,
    connect_to: str | None = None,
    timeout: float = TIMEOUT,
) -> FoundMessage:
    """Polls INBOX for the Message-ID until `within` seconds have passed; raises
    TimeoutError if it never arrives."""
    return await asyncio.to_thread(
        find_message_blocking, access, ca_file, message_id, within, connect_to, timeout
    )


def send_message_blocking(
    access: MailboxAccess,
    ca_file: str,
    to: str | None = None,
    subject: str | None = None,
    connect_to: str | None = None,
    timeout: float = TIMEOUT,
) -> SentMessage:
    """The blocking `send_message`."""
    domain = access.address.rpartition("@")[2] or "example.invalid"
    message = EmailMessage()
    message["From"] = access.address
    message["To"] = to or access.address
    message["Subject"] = subject or f"example internal service {uuid.uuid4().hex[:12]}"
    message["Date"] = formatdate(localtime=False, usegmt=True)
    message["Message-ID"] = make_msgid("mbl-example", domain=domain)
    message.set_content("Sent by the example internal service with the access it was given.\n")
    context = ssl.create_default_context(cafile=ca_file)
    server = access.smtp
    with _smtp_connect(server, context, connect_to, timeout) as smtp:
        _smtp_login(smtp, access, server)
        refused = smtp.send_message(message, from_addr=access.address, to_addrs=[message["To"]])
        if refused:
            raise smtplib.SMTPRecipientsRefused(refused)
    return SentMessage(str(message["Message-ID"]), str(message["Subject"]), str(message["To"]))


def find_message_blocking(
    access: MailboxAccess,
    ca_file: str,
    message_id: str,
    within: float = 20.0,
    connect_to: str | None = None,
    timeout: float = TIMEOUT,
) -> FoundMessage:
    """The blocking `find_message`."""
    deadline = time.monotonic() + within
    context = ssl.create_default_context(cafile=ca_file)
    server = access.imap
    imap = _imap_connect(server, context, connect_to, timeout)
    try:
        _imap_login(imap, access, server)
        while True:
            found = _search(imap, message_id)
            if found is not None:
                return found
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{message_id} not in INBOX after {within:.0f} s")
            time.sleep(0.1)
    finally:
        try:
            imap.logout()
        except (OSError, imaplib.IMAP4.error):
            imap.shutdown()


def _smtp_connect(
    server: MailServer, context: ssl.SSLContext, connect_to: str | None, timeout: float
) -> smtplib.SMTP:
    # smtplib verifies the certificate for the host it was given: connect to that name, or,
    # with `connect_to`, open the socket there and verify against the answer's host anyway.
    smtp: smtplib.SMTP
    if server.security is ConnectionSecurity.SSL:
        smtp = _SmtpSsl(server.host, connect_to, context=context, timeout=timeout)
        smtp.connect(server.host, server.port)
    else:
        smtp = _SmtpPlain(server.host, connect_to, timeout=timeout)
        smtp.connect(server.host, server.port)
        smtp.ehlo()
        smtp.starttls(context=context)  # raises SMTPNotSupportedError when not offered
    smtp.ehlo()
    return smtp


class _SmtpPlain(smtplib.SMTP):
    def __init__(self, name: str, connect_to: str | None, timeout: float) -> None:
        self._connect_to = connect_to
        super().__init__(local_hostname="localhost", timeout=timeout)
        self._host = name  # the name STARTTLS verifies

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        return socket.create_connection((self._connect_to or host, port), timeout)


class _SmtpSsl(smtplib.SMTP_SSL):
    def __init__(
        self, name: str, connect_to: str | None, context: ssl.SSLContext, timeout: float
    ) -> None:
        self._connect_to = connect_to
        self._name = name
        super().__init__(local_hostname="localhost", context=context, timeout=timeout)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        raw = socket.create_connection((self._connect_to or host, port), timeout)
        return self.context.wrap_socket(raw, server_hostname=self._name)


def _smtp_login(smtp: smtplib.SMTP, access: MailboxAccess, server: MailServer) -> None:
    offered = set(smtp.esmtp_features.get("auth", "").upper().split())
    mechanism = next((m for m in access.sasl_mechanisms if m in offered), None)
    if mechanism is None:
        raise MailLoginRefused(f"SMTP offers none of {', '.join(access.sasl_mechanisms)}")
    if mechanism == "LOGIN":
        steps = [server.username.encode(), (server.password or "").encode()]
        code, _ = smtp.docmd("AUTH", "LOGIN")
        for step in steps:
            if code != 334:
                break
            code, _ = smtp.docmd(_b64(step))
    else:
        initial = _initial_response(access, server, mechanism)
        code, _ = smtp.docmd("AUTH", f"{mechanism} {_b64(initial)}")
        if code == 334:  # an error challenge: answer it to get the final refusal
            code, _ = smtp.docmd(_b64(sasl.error_challenge_reply(mechanism)))
    if code != 235:
        raise MailLoginRefused(f"SMTP AUTH {mechanism} answered {code}")


def _imap_connect(
    server: MailServer, context: ssl.SSLContext, connect_to: str | None, timeout: float
) -> imaplib.IMAP4:
    imap: imaplib.IMAP4
    if server.security is ConnectionSecurity.SSL:
        imap = _ImapSsl(server.host, server.port, context, connect_to, timeout)
    else:
        imap = _ImapPlain(server.host, server.port, connect_to, timeout)
        imap.starttls(ssl_context=context)  # verifies for imap.host, the answer's host
    return imap


class _ImapPlain(imaplib.IMAP4):
    def __init__(self, host: str, port: int, connect_to: str | None, timeout: float) -> None:
        self._connect_to = connect_to
        super().__init__(host, port, timeout)

    def _create_socket(self, timeout: float | None = None) -> socket.socket:
        return socket.create_connection((self._connect_to or self.host, self.port), timeout)


class _ImapSsl(imaplib.IMAP4_SSL):
    def __init__(
        self,
        host: str,
        port: int,
        context: ssl.SSLContext,
        connect_to: str | None,
        timeout: float,
    ) -> None:
        self._connect_to = connect_to
        super().__init__(host, port, ssl_context=context, timeout=timeout)

    def _create_socket(self, timeout: float | None = None) -> socket.socket:
        raw = socket.create_connection((self._connect_to or self.host, self.port), timeout)
        context: ssl.SSLContext = self.ssl_context
        return context.wrap_socket(raw, server_hostname=self.host)


def _imap_login(imap: imaplib.IMAP4, access: MailboxAccess, server: MailServer) -> None:
    capabilities = {c.upper() for c in imap.capabilities}
    offered = {c[5:] for c in capabilities if c.startswith("AUTH=")}
    for mechanism in access.sasl_mechanisms:
        try:
            if mechanism == "LOGIN" and "LOGINDISABLED" not in capabilities:
                imap.login(server.username, server.password or "")
                return
            if mechanism in offered:
                initial = _initial_response(access, server, mechanism)
                imap.authenticate(mechanism, sasl.responder(mechanism, initial))
                return
        except imaplib.IMAP4.error as exc:
            raise MailLoginRefused(f"IMAP {mechanism} refused") from exc
    raise MailLoginRefused(f"IMAP offers none of {', '.join(access.sasl_mechanisms)}")


def _initial_response(access: MailboxAccess, server: MailServer, mechanism: str) -> bytes:
    if mechanism == "PLAIN":
        return sasl.plain(server.username, server.password or "")
    if access.access_token is None:
        raise MailLoginRefused(f"{mechanism} needs an access token")
    return sasl.token_response(
        mechanism, server.username, access.access_token, server.host, server.port
    )


def _search(imap: imaplib.IMAP4, message_id: str) -> FoundMessage | None:
    # SELECT again on each poll: it reports what was delivered since.
    status, _ = imap.select("INBOX", readonly=True)
    if status != "OK":
        raise imaplib.IMAP4.error("SELECT INBOX failed")
    status, data = imap.uid("SEARCH", "HEADER", "Message-ID", _quoted(message_id))
    uids = (data[0] or b"").split() if status == "OK" and data else []
    if not uids:
        return None
    uid = uids[-1].decode()
    status, fetched = imap.uid("FETCH", uid, "(BODY.PEEK[HEADER.FIELDS (SUBJECT MESSAGE-ID)])")
    headers = b""
    for part in fetched:
        if isinstance(part, tuple):
            headers += part[1]
    subject = ""
    for line in headers.decode("utf-8", "replace").splitlines():
        if line.lower().startswith("subject:"):
            subject = line.split(":", 1)[1].strip()
    return FoundMessage(uid=uid, message_id=message_id, subject=subject)


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
