"""The SMTP probe: greeting, EHLO, STARTTLS, AUTH (PLAIN, LOGIN, XOAUTH2, OAUTHBEARER), through
aiosmtplib, each reply classified into a failure code; a greeting missing in plaintext, or TLS
meeting a plaintext server, asks the same port with the other security (SECURITY_MISMATCH)."""

import asyncio
import contextlib
import functools
import ipaddress
import re
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Final

import aiosmtplib

from mailbox_link_contract.failures import FailureCode
from mailbox_link_contract.values import ConnectionSecurity
from mailbox_link_shared.mail_probes.common import (
    _GOODBYE_GRACE,
    SMTP_MAX_REPLY_BYTES,
    Endpoint,
    ProbeFailed,
    _after_tls_failure,
    _connect_failure,
    _Credentials,
    _Mechanism,
    _not_offered,
    _plaintext_greeting,
    _too_much,
)

KIND: Final = "SMTP"

# An enhanced status code (RFC 3463) at the start of a reply: named in details, unlike the
# reply's free text, which could be anything (the echoed AUTH LOGIN base64 included).
_ENHANCED_STATUS: Final = re.compile(r"^([245]\.[0-9]{1,3}\.[0-9]{1,3})(?:\s|$)")
# What aiosmtplib says when a reply exceeds its line or reply bound (protocol.py).
_TOO_LONG: Final = "Response too long"


class _AbortingSMTP(aiosmtplib.SMTP):
    """aiosmtplib's client, closing by abort: a graceful TLS close would linger for the peer."""

    def close(self) -> None:
        if isinstance(self.transport, asyncio.WriteTransport):
            self.transport.abort()
        super().close()


def _reason(exc: aiosmtplib.SMTPResponseException) -> str:
    """A reply as we classified it: its code and enhanced status code, never its text."""
    enhanced = _ENHANCED_STATUS.match(exc.message.strip())
    return f"{exc.code} {enhanced.group(1)}" if enhanced else str(exc.code)


def _too_long(exc: aiosmtplib.SMTPResponseException) -> ProbeFailed | None:
    """The failure for a reply over aiosmtplib's bounds, which it raises as soon as it sees it."""
    if exc.code == aiosmtplib.SMTPStatus.invalid_response and exc.message == _TOO_LONG:
        return ProbeFailed(
            FailureCode.NOT_AN_SMTP_SERVER, _too_much("in one reply", SMTP_MAX_REPLY_BYTES)
        )
    return None


def _not_smtp(exc: aiosmtplib.SMTPResponseException) -> ProbeFailed:
    """Names the protocol behind a greeting aiosmtplib could not parse; nothing of the greeting
    itself is quoted (a detail must not tell a port scanner what listens there)."""
    too_long = _too_long(exc)
    if too_long is not None:
        return too_long
    # aiosmtplib reports "Malformed SMTP response line: <the line>".
    line = exc.message.partition(": ")[2] or exc.message
    if line.upper().startswith("+OK"):
        return ProbeFailed(FailureCode.NOT_AN_SMTP_SERVER, "this is a POP3 port")
    if line.upper().startswith(("* OK", "* PREAUTH", "* BYE")):
        return ProbeFailed(FailureCode.NOT_AN_SMTP_SERVER, "this is an IMAP port")
    return ProbeFailed(FailureCode.NOT_AN_SMTP_SERVER, "not an SMTP greeting")


def _is_smtp_greeting(line: bytes) -> bool:
    """An SMTP server's welcome (220), as the other-security try recognises it."""
    return line[:4] in (b"220 ", b"220-", b"220\r", b"220\n")


def _address_literal(sock: socket.socket) -> str:
    """Our own address as an EHLO argument (RFC 5321 4.1.3); avoids a getfqdn() lookup."""
    local = ipaddress.ip_address(sock.getsockname()[0])
    return f"[IPv6:{local}]" if local.version == 6 else f"[{local}]"


class _SmtpProbe:
    def __init__(self, endpoint: Endpoint, credentials: _Credentials, tls: ssl.SSLContext):
        self.verified = False
        self._endpoint = endpoint
        self._credentials = credentials
        self._tls = tls
        self._sock: socket.socket | None = None
        self._smtp: _AbortingSMTP | None = None

    async def run(self) -> None:
        sock = await self._connect_socket()
        # aiosmtplib would verify TLS against the name it connects to; handing it a socket
        # already connected to the vetted address lets `hostname` be the name TLS must prove.
        self._smtp = smtp = _AbortingSMTP(
            hostname=self._endpoint.hostname,
            sock=sock,
            use_tls=self._endpoint.security is ConnectionSecurity.SSL,
            start_tls=False,
            tls_context=self._tls,
            timeout=None,  # the probe's single deadline bounds everything
            local_hostname=_address_literal(sock),
        )
        # connect() wraps the socket in a transport before it first suspends, so from here on
        # the transport owns it (closing it ourselves could pull it from under a TLS shutdown).
        self._sock = None
        await self._greet(smtp)
        if self._endpoint.security is ConnectionSecurity.STARTTLS:
            await self._starttls(smtp)
        await self._ehlo(smtp)
        await self._login(smtp)
        self.verified = True
        # A relay-less submission server may answer QUIT with 421 or just hang up: still fine.
        with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
            async with asyncio.timeout(_GOODBYE_GRACE):
                await smtp.quit()

    def unexpected(self, exc: Exception) -> ProbeFailed:
        if isinstance(exc, OSError):
            reason = exc.strerror or "server closed the connection"
            return ProbeFailed(FailureCode.SMTP_UNREACHABLE, f"connection failed: {reason}")
        name = type(exc).__name__
        if isinstance(exc, aiosmtplib.SMTPResponseException):
            too_long = _too_long(exc)
            if too_long is not None:
                return too_long
            name = f"{name} {exc.code}"
        return ProbeFailed(FailureCode.NOT_AN_SMTP_SERVER, f"unexpected SMTP exchange ({name})")

    def close(self) -> None:
        if self._smtp is not None:
            self._smtp.close()
        if self._sock is not None:
            self._sock.close()

    async def _connect_socket(self) -> socket.socket:
        address = ipaddress.ip_address(self._endpoint.address)
        family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
        self._sock = sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, (str(address), self._endpoint.port))
        except OSError as exc:
            raise _connect_failure(exc, FailureCode.SMTP_UNREACHABLE, in_tls=False) from None
        return sock

    async def _greet(self, smtp: aiosmtplib.SMTP) -> None:
        """Connects (TLS first for implicit TLS) and checks for a 220 greeting; in plaintext,
        SECURITY_MISMATCH if it never comes but the port greets over TLS."""
        connecting = asyncio.ensure_future(smtp.connect())
        try:
            if smtp.use_tls:
                await connecting
            else:
                await _plaintext_greeting(
                    connecting, KIND, self._endpoint, self._tls, _is_smtp_greeting
                )
        except aiosmtplib.SMTPConnectResponseError as exc:
            raise ProbeFailed(
                FailureCode.SMTP_UNREACHABLE, f"server refused the session ({_reason(exc)})"
            ) from None
        except aiosmtplib.SMTPResponseException as exc:
            raise _not_smtp(exc) from None
        except aiosmtplib.SMTPConnectError as exc:
            cause = exc.__cause__ or exc
            if isinstance(cause, aiosmtplib.SMTPServerDisconnected):
                raise ProbeFailed(
                    FailureCode.SMTP_UNREACHABLE, "server closed the connection before its greeting"
                ) from None
            implicit = smtp.use_tls
            failure = _connect_failure(cause, FailureCode.SMTP_UNREACHABLE, in_tls=implicit)
            raise await _after_tls_failure(
                cause, failure, KIND, self._endpoint, self._tls, _is_smtp_greeting
            ) from None
        finally:
            if not connecting.done():
                connecting.cancel()
                await asyncio.wait((connecting,))

    async def _starttls(self, smtp: aiosmtplib.SMTP) -> None:
        await self._ehlo(smtp)
        if not smtp.supports_extension("starttls"):
            raise ProbeFailed(FailureCode.TLS_FAILED, "server does not offer STARTTLS")
        try:
            await smtp.starttls()  # verifies against `hostname` with our context
        except aiosmtplib.SMTPResponseException as exc:
            raise _too_long(exc) or ProbeFailed(
                FailureCode.TLS_FAILED, f"STARTTLS refused ({_reason(exc)})"
            ) from None
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise _connect_failure(
                exc.__cause__ or exc, FailureCode.SMTP_UNREACHABLE, in_tls=True, after_starttls=True
            ) from None

    async def _ehlo(self, smtp: aiosmtplib.SMTP) -> None:
        try:
            await smtp.ehlo()
        except aiosmtplib.SMTPResponseException as exc:
            raise _too_long(exc) or ProbeFailed(
                FailureCode.NOT_AN_SMTP_SERVER, f"EHLO refused ({_reason(exc)})"
            ) from None
        except aiosmtplib.SMTPServerDisconnected:
            raise ProbeFailed(
                FailureCode.SMTP_UNREACHABLE, "server closed the connection during EHLO"
            ) from None

    async def _login(self, smtp: aiosmtplib.SMTP) -> None:
        if not smtp.supports_extension("auth"):
            raise ProbeFailed(FailureCode.SMTP_AUTH_FAILED, "server does not offer AUTH")
        authenticate = self._mechanism(smtp)
        try:
            await authenticate(self._credentials.username, self._credentials.secret)
        except aiosmtplib.SMTPAuthenticationError as exc:
            raise ProbeFailed(
                FailureCode.SMTP_AUTH_FAILED, f"login rejected ({_reason(exc)})", login_refused=True
            ) from None
        except aiosmtplib.SMTPServerDisconnected:
            raise ProbeFailed(
                FailureCode.SMTP_UNREACHABLE, "server closed the connection during AUTH"
            ) from None

    def _mechanism(self, smtp: aiosmtplib.SMTP) -> Callable[[str, str], Awaitable[object]]:
        """The one AUTH mechanism to try, out of those the server offers."""
        wanted: dict[str, Callable[[str, str], Awaitable[object]]]
        if self._credentials.mechanism is _Mechanism.XOAUTH2:
            # aiosmtplib answers XOAUTH2's error challenge itself, so a bad token fails fast.
            wanted = {"xoauth2": smtp.auth_xoauth2}
        elif self._credentials.mechanism is _Mechanism.OAUTHBEARER:
            wanted = {"oauthbearer": functools.partial(self._oauthbearer, smtp)}
        else:
            # One mechanism only: aiosmtplib's login() falls through to the next one after a
            # rejection, doubling failed attempts (and the server's penalty) for a wrong password.
            wanted = {"plain": smtp.auth_plain, "login": smtp.auth_login}
        offered = smtp.server_auth_methods
        name = next((name for name in wanted if name in offered), None)
        if name is None:
            raise _not_offered(FailureCode.SMTP_AUTH_FAILED, self._credentials.mechanism, offered)
        return wanted[name]

    async def _oauthbearer(self, smtp: aiosmtplib.SMTP, _username: str, _token: str) -> None:
        """AUTH OAUTHBEARER (RFC 7628), which aiosmtplib lacks: the initial response (from the
        credentials) in the command, and a single %x01 to an error challenge so the refusal
        comes at once."""
        response = self._credentials.initial_response().encode("ascii")
        reply = await smtp.execute_command(b"AUTH", b"OAUTHBEARER", response)
        if reply.code == aiosmtplib.SMTPStatus.auth_continue:
            reply = await smtp.execute_command(self._credentials.answer_to_rejection())
        if reply.code != aiosmtplib.SMTPStatus.auth_successful:
            raise aiosmtplib.SMTPAuthenticationError(reply.code, reply.message)
