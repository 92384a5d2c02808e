"""Protocol adapters that prove we can really log in to a person's own IMAP and SMTP servers.

Every probe connects to an address that was vetted beforehand and never re-resolves the host name
(so DNS cannot move us onto another network between the check and the connection), while TLS is
verified against the host name the person typed. A probe logs in with a password
(`probe_imap`, `probe_smtp`) or with an OAuth access token over XOAUTH2 (`probe_imap_xoauth2`,
`probe_smtp_xoauth2`); all four share the `Probe` signature. A probe either returns None or
raises ProbeFailed with a FailureCode and a short detail; the password or token never appears in
a detail, a log line or a chained exception.
"""

import asyncio
import base64
import collections
import contextlib
import enum
import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, TypeVar

import aiosmtplib
from aioimaplib import AUTH, AioImapException, Command, IMAP4ClientProtocol, quoted

from mailbox_link_contract.failures import FailureCode
from mailbox_link_contract.values import ConnectionSecurity

_T = TypeVar("_T")

# A greeting is one short line; a peer that sends more without a line break is not IMAP.
_GREETING_LIMIT: Final = 4096
# LOGOUT / QUIT only happen after the credentials were proven, so they get a short grace period.
_GOODBYE_GRACE: Final = 1.0
# A reply that arrived together with a hang-up still counts; it needs a few loop turns to land.
_LATE_REPLY_GRACE: Final = 0.05
_DETAIL_LIMIT: Final = 200
_IMAP_VERSIONS: Final = frozenset({"IMAP4REV1", "IMAP4REV2"})


@dataclass(frozen=True)
class Endpoint:
    """Where to connect (a vetted address) and which name TLS must prove."""

    hostname: str
    address: str
    port: int
    security: ConnectionSecurity


class ProbeFailed(Exception):
    """A probe did not get all the way to a logged-in session."""

    def __init__(self, code: FailureCode, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


# (endpoint, username, password or access token, TLS context, timeout in seconds)
Probe = Callable[[Endpoint, str, str, ssl.SSLContext, float], Awaitable[None]]


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


# --- shared ------------------------------------------------------------------------------


class _Mechanism(enum.Enum):
    """How a probe logs in; the value names it in failure details."""

    PASSWORD = "password login"  # noqa: S105 (names the mechanism in details)
    XOAUTH2 = "XOAUTH2"


@dataclass(frozen=True)
class _Credentials:
    """Who logs in and how; the secret is kept out of repr (tracebacks, debug logs)."""

    mechanism: _Mechanism
    username: str
    secret: str = field(repr=False)

    def initial_response(self) -> str:
        """The base64 SASL response: PLAIN (RFC 4616) for a password, else XOAUTH2."""
        if self.mechanism is _Mechanism.XOAUTH2:
            raw = f"user={self.username}\x01auth=Bearer {self.secret}\x01\x01"
        else:
            raw = f"\0{self.username}\0{self.secret}"
        return base64.b64encode(raw.encode()).decode("ascii")

    def redact(self, text: str) -> str:
        """Masks the secret, raw or as sent on the wire, in server text."""
        for form in (self.secret, self.initial_response()):
            if form:
                text = text.replace(form, "***")
        return text


class _Probe(Protocol):
    verified: bool

    async def run(self) -> None: ...

    def unexpected(self, exc: Exception) -> ProbeFailed: ...

    def close(self) -> None: ...


async def _drive(
    make: Callable[[Endpoint, _Credentials, ssl.SSLContext], _Probe],
    endpoint: Endpoint,
    credentials: _Credentials,
    tls: ssl.SSLContext,
    seconds: float,
) -> None:
    """Runs a probe under one deadline and always tears its connection down."""
    probe = make(endpoint, credentials, tls)
    try:
        async with asyncio.timeout(seconds):
            await probe.run()
    except TimeoutError:
        # Running out of time while saying goodbye does not undo a proven login.
        if not probe.verified:
            raise ProbeFailed(FailureCode.TIMEOUT, f"no answer within {seconds:g} s") from None
    except ProbeFailed as failure:
        # Server text goes into details; a hostile server could echo the secret back.
        # `from None` keeps library exceptions (which may quote commands) out of the chain.
        raise ProbeFailed(failure.code, credentials.redact(failure.detail)) from None
    except (AioImapException, aiosmtplib.SMTPException, OSError) as exc:
        raise probe.unexpected(exc) from None
    finally:
        probe.close()


def _not_offered(code: FailureCode, mechanism: _Mechanism, offered: Iterable[str]) -> ProbeFailed:
    """Says the server lacks our way of logging in, and which ways it has instead."""
    listed = " ".join(sorted(name.upper() for name in offered)) or "none"
    return ProbeFailed(code, f"server does not offer {mechanism.value} (it offers {listed})")


def _printable(raw: bytes | str) -> str:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    text = "".join(c if c.isprintable() else " " for c in text).strip()
    return text[:_DETAIL_LIMIT]


def _connect_failure(
    exc: BaseException, unreachable: FailureCode, *, in_tls: bool, after_starttls: bool = False
) -> ProbeFailed:
    """Maps an error raised while connecting or negotiating TLS to a failure."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return ProbeFailed(FailureCode.TLS_FAILED, f"certificate not trusted: {exc.verify_message}")
    if isinstance(exc, ssl.SSLError):
        if exc.reason == "WRONG_VERSION_NUMBER":
            detail = (
                "server did not answer TLS after STARTTLS"
                if after_starttls
                else "server did not answer TLS: is the port a STARTTLS port?"
            )
            return ProbeFailed(FailureCode.TLS_FAILED, detail)
        reason = exc.reason or type(exc).__name__
        return ProbeFailed(FailureCode.TLS_FAILED, f"TLS handshake failed: {reason}")
    if isinstance(exc, TimeoutError):
        return ProbeFailed(FailureCode.TIMEOUT, "no answer while connecting")
    if isinstance(exc, ConnectionRefusedError):
        return ProbeFailed(unreachable, "connection refused")
    if in_tls and isinstance(exc, ConnectionError):
        return ProbeFailed(FailureCode.TLS_FAILED, "connection closed during the TLS handshake")
    if isinstance(exc, OSError) and exc.strerror:
        return ProbeFailed(unreachable, f"cannot connect: {exc.strerror}")
    return ProbeFailed(unreachable, f"cannot connect: {type(exc).__name__}")


# --- IMAP --------------------------------------------------------------------------------


def _classify_greeting(greeting: bytes) -> ProbeFailed | None:
    """Tells IMAP from the other mail protocols before aioimaplib sees a byte.

    aioimaplib answers a POP3 greeting with CAPABILITY and then waits for ever, so anything
    that is not an IMAP greeting must be stopped here.
    """
    head = greeting[:16].upper()
    if head.startswith((b"* OK", b"* PREAUTH")):
        return None
    if not greeting:
        return ProbeFailed(
            FailureCode.IMAP_UNREACHABLE, "server closed the connection before its greeting"
        )
    if head.startswith(b"+OK"):
        return ProbeFailed(FailureCode.POP3_ONLY, "this is a POP3 server (greeting +OK)")
    if head.startswith(b"* BYE"):
        text = _printable(greeting[5:])
        return ProbeFailed(FailureCode.IMAP_UNREACHABLE, f"server refused the session: {text}")
    if head.startswith(b"220"):
        return ProbeFailed(FailureCode.NOT_AN_IMAP_SERVER, "this is an SMTP port (greeting 220)")
    return ProbeFailed(
        FailureCode.NOT_AN_IMAP_SERVER, f"not an IMAP greeting: {_printable(greeting)[:60]}"
    )


# aioimaplib ships no type information, so its base class is Any to mypy.
class _ImapProtocol(IMAP4ClientProtocol):  # type: ignore[misc]
    """aioimaplib's protocol, holding the greeting back until we have classified it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop, self._on_connection_lost)
        self.greeting: asyncio.Future[bytes] = loop.create_future()
        self.lost: asyncio.Future[ProbeFailed] = loop.create_future()
        # How to answer AUTHENTICATE's `+` challenges: the queued lines first, then the other.
        self.sasl_answers: collections.deque[bytes] = collections.deque()
        self.sasl_after_rejection = b"*"
        self._held: bytearray | None = bytearray()

    def data_received(self, data: bytes) -> None:
        if self._held is None:
            self._feed(data)
            return
        self._held += data
        if (b"\n" in self._held or len(self._held) > _GREETING_LIMIT) and not self.greeting.done():
            self.greeting.set_result(bytes(self._held).partition(b"\n")[0].rstrip(b"\r"))

    def release_greeting(self) -> list[asyncio.Future[Any]]:
        """Hands the held bytes to aioimaplib; returns the tasks it started (its welcome)."""
        held, self._held = bytes(self._held or b""), None
        self._feed(held)
        return list(self.tasks)

    def _feed(self, data: bytes) -> None:
        try:
            super().data_received(data)
        except Exception:
            # aioimaplib's parse errors quote the pending command, which may be LOGIN or
            # AUTHENTICATE with the secret; letting them reach the event loop would log it.
            # Drop the session instead.
            self._fail(FailureCode.NOT_AN_IMAP_SERVER, "server sent a response out of sequence")
            self.transport.abort()

    def _continuation(self, line: bytes) -> None:
        pending = self.pending_sync_command
        if pending is not None and pending.name == "AUTHENTICATE":
            # A queued answer is the SASL response the command could not carry (no SASL-IR);
            # any other challenge means the server rejected it, and only answering it gets the
            # tagged NO instead of a hang. Written directly, so aioimaplib never logs it.
            answer = self.sasl_answers.popleft() if self.sasl_answers else self.sasl_after_rejection
            self.transport.write(answer + b"\r\n")
            return
        super()._continuation(line)

    def _on_connection_lost(self, _exc: Exception | None) -> None:
        self._fail(FailureCode.IMAP_UNREACHABLE, "server closed the connection")
        if not self.greeting.done():
            self.greeting.set_result(b"")

    def _fail(self, code: FailureCode, detail: str) -> None:
        if not self.lost.done():
            self.lost.set_result(ProbeFailed(code, detail))


@dataclass(frozen=True)
class _Reply:
    result: str
    text: str

    @classmethod
    def of(cls, response: Any) -> "_Reply":
        lines = [line for line in response.lines if isinstance(line, bytes | bytearray)]
        return cls(str(response.result), _printable(bytes(lines[-1])) if lines else "")


class _ImapProbe:
    def __init__(self, endpoint: Endpoint, credentials: _Credentials, tls: ssl.SSLContext):
        self.verified = False
        self._endpoint = endpoint
        self._credentials = credentials
        self._tls = tls
        self._loop = asyncio.get_running_loop()
        self._proto = _ImapProtocol(self._loop)
        self._transports: list[asyncio.BaseTransport] = []

    async def run(self) -> None:
        await self._connect()
        failure = _classify_greeting(await self._proto.greeting)
        if failure is not None:
            raise failure
        welcome = self._proto.release_greeting()
        # The welcome asks CAPABILITY; it raises for IMAP4rev2-only servers, which we accept,
        # so its outcome is ignored and the capabilities are checked below.
        await self._guard("the greeting", asyncio.gather(*welcome, return_exceptions=True))
        if self._endpoint.security is ConnectionSecurity.STARTTLS:
            await self._starttls()
        if not self._capabilities() & _IMAP_VERSIONS:
            raise ProbeFailed(
                FailureCode.NOT_AN_IMAP_SERVER, "server does not announce IMAP4rev1 or IMAP4rev2"
            )
        if self._proto.state != AUTH:  # PREAUTH over implicit TLS: already logged in
            await self._login()
        await self._examine_inbox()
        self.verified = True
        with contextlib.suppress(ProbeFailed, AioImapException, OSError, TimeoutError):
            async with asyncio.timeout(_GOODBYE_GRACE):
                await self._execute(self._command("LOGOUT"))

    def unexpected(self, exc: Exception) -> ProbeFailed:
        # Only the class name: aioimaplib's messages may quote the LOGIN/AUTHENTICATE command.
        if isinstance(exc, OSError):
            reason = exc.strerror or type(exc).__name__
            return ProbeFailed(FailureCode.IMAP_UNREACHABLE, f"connection failed: {reason}")
        name = type(exc).__name__
        return ProbeFailed(FailureCode.NOT_AN_IMAP_SERVER, f"unexpected IMAP exchange ({name})")

    def close(self) -> None:
        for task in list(self._proto.tasks):
            task.cancel()
        for transport in self._transports:
            # abort, not close: a graceful TLS close would linger waiting for the peer.
            if isinstance(transport, asyncio.WriteTransport):
                transport.abort()

    async def _connect(self) -> None:
        implicit = self._endpoint.security is ConnectionSecurity.SSL
        try:
            transport, _ = await self._loop.create_connection(
                lambda: self._proto,
                self._endpoint.address,
                self._endpoint.port,
                ssl=self._tls if implicit else None,
                server_hostname=self._endpoint.hostname if implicit else None,
            )
        except OSError as exc:
            raise _connect_failure(exc, FailureCode.IMAP_UNREACHABLE, in_tls=implicit) from None
        self._transports.append(transport)

    async def _starttls(self) -> None:
        if self._proto.state == AUTH:
            # A plaintext PREAUTH cannot be secured any more (and may be injected).
            raise ProbeFailed(FailureCode.TLS_FAILED, "server sent PREAUTH before STARTTLS")
        if "STARTTLS" not in self._capabilities():
            raise ProbeFailed(FailureCode.TLS_FAILED, "server does not offer STARTTLS")
        reply = await self._execute(self._command("STARTTLS"))
        if reply.result != "OK":
            raise ProbeFailed(FailureCode.TLS_FAILED, f"STARTTLS refused: {reply.text}")
        # Anything after the OK came in plaintext and may be injected: drop it (RFC 2595 3.1).
        self._proto.incomplete_line = b""
        try:
            secured = await self._loop.start_tls(
                self._proto.transport,
                self._proto,
                self._tls,
                server_hostname=self._endpoint.hostname,
            )
        except OSError as exc:
            raise _connect_failure(
                exc, FailureCode.IMAP_UNREACHABLE, in_tls=True, after_starttls=True
            ) from None
        if secured is None:
            raise ProbeFailed(FailureCode.TLS_FAILED, "connection closed during the TLS handshake")
        self._transports.append(secured)
        self._proto.transport = secured
        # Capabilities seen before TLS must be forgotten (RFC 9051 6.2.1).
        with contextlib.suppress(AioImapException):
            await self._guard("CAPABILITY", self._proto.capability())

    async def _login(self) -> None:
        if self._credentials.mechanism is _Mechanism.XOAUTH2:
            command, secret = self._xoauth2_command()
        else:
            command, secret = self._password_command()
        # Sent through execute() rather than aioimaplib's login()/xoauth2(): login() scrubs the
        # raw password from its debug log but sends the quoted one, so an escaped password
        # leaks; xoauth2() never answers the error challenge, so a bad token hangs.
        reply = await self._execute(command, scrub=secret)
        if reply.result != "OK":
            raise ProbeFailed(FailureCode.IMAP_AUTH_FAILED, f"login rejected: {reply.text}")
        self._proto.state = AUTH

    def _password_command(self) -> tuple[Any, str | None]:
        """AUTHENTICATE PLAIN or LOGIN, and the secret in it to keep out of the wire log."""
        capabilities = self._capabilities()
        if "AUTH=PLAIN" in capabilities and capabilities & {"SASL-IR", "LOGINDISABLED"}:
            # AUTHENTICATE PLAIN carries any UTF-8 credentials; LOGIN's quoted strings may not.
            # Without SASL-IR it costs a round trip, so LOGIN is preferred unless disabled.
            return self._authenticate("PLAIN")
        if "LOGINDISABLED" in capabilities:
            raise _not_offered(FailureCode.IMAP_AUTH_FAILED, _Mechanism.PASSWORD, self._sasl())
        secret = quoted(self._credentials.secret)
        try:
            return self._command("LOGIN", quoted(self._credentials.username), secret), secret
        except ValueError:
            raise ProbeFailed(
                FailureCode.IMAP_AUTH_FAILED, "username or password contains a line break"
            ) from None

    def _xoauth2_command(self) -> tuple[Any, str | None]:
        if "AUTH=XOAUTH2" not in self._capabilities():
            raise _not_offered(FailureCode.IMAP_AUTH_FAILED, _Mechanism.XOAUTH2, self._sasl())
        # A rejected token comes back as a `+` challenge carrying the error; XOAUTH2 expects
        # an empty answer to it, and only then sends the tagged NO.
        self._proto.sasl_after_rejection = b""
        return self._authenticate("XOAUTH2")

    def _authenticate(self, mechanism: str) -> tuple[Any, str | None]:
        """AUTHENTICATE with the credentials' SASL response, in the command if SASL-IR allows."""
        response = self._credentials.initial_response()
        if "SASL-IR" in self._capabilities():
            return self._command("AUTHENTICATE", mechanism, response), response
        # Otherwise it answers the server's first `+` (RFC 9051 6.2.2), never in the command.
        self._proto.sasl_answers.append(response.encode("ascii"))
        return self._command("AUTHENTICATE", mechanism), None

    async def _examine_inbox(self) -> None:
        # EXAMINE is SELECT read-only: it proves the mailbox opens without touching \Recent.
        reply = await self._execute(self._command("EXAMINE", "INBOX"))
        if reply.result != "OK":
            raise ProbeFailed(
                FailureCode.NOT_AN_IMAP_SERVER, f"INBOX could not be opened: {reply.text}"
            )

    def _capabilities(self) -> set[str]:
        return {str(capability).upper() for capability in self._proto.capabilities}

    def _sasl(self) -> list[str]:
        """The SASL mechanisms the server offers (its AUTH= capabilities)."""
        return [name[5:] for name in self._capabilities() if name.startswith("AUTH=")]

    def _command(self, name: str, *args: str) -> Any:
        return Command(name, self._proto.new_tag(), *args, loop=self._loop)

    async def _execute(self, command: Any, scrub: str | None = None) -> _Reply:
        response = await self._guard(str(command.name), self._proto.execute(command, scrub=scrub))
        return _Reply.of(response)

    async def _guard(self, step: str, awaitable: Awaitable[_T]) -> _T:
        """Awaits a step of aioimaplib, which would wait for ever on a dropped connection."""
        task = asyncio.ensure_future(awaitable)
        try:
            await asyncio.wait((task, self._proto.lost), return_when=asyncio.FIRST_COMPLETED)
            if not task.done():
                await asyncio.wait((task,), timeout=_LATE_REPLY_GRACE)
        finally:
            if not task.done():
                task.cancel()
                await asyncio.wait((task,))
        if not task.cancelled():
            return task.result()
        failure = self._proto.lost.result()
        raise ProbeFailed(failure.code, f"{failure.detail} during {step}")


# --- SMTP --------------------------------------------------------------------------------


class _AbortingSMTP(aiosmtplib.SMTP):
    """aiosmtplib's client, closing by abort: a graceful TLS close would linger for the peer."""

    def close(self) -> None:
        if isinstance(self.transport, asyncio.WriteTransport):
            self.transport.abort()
        super().close()


def _not_smtp(message: str) -> ProbeFailed:
    """Names the protocol behind a greeting aiosmtplib could not parse."""
    # aiosmtplib reports "Malformed SMTP response line: <the line>".
    line = message.partition(": ")[2] or message
    if line.upper().startswith("+OK"):
        return ProbeFailed(FailureCode.NOT_AN_SMTP_SERVER, "this is a POP3 port")
    if line.upper().startswith(("* OK", "* PREAUTH", "* BYE")):
        return ProbeFailed(FailureCode.NOT_AN_SMTP_SERVER, "this is an IMAP port")
    return ProbeFailed(
        FailureCode.NOT_AN_SMTP_SERVER, f"not an SMTP greeting: {_printable(line)[:60]}"
    )


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
        """Connects (TLS first for implicit TLS) and checks for a 220 greeting."""
        try:
            await smtp.connect()
        except aiosmtplib.SMTPConnectResponseError as exc:
            text = _printable(exc.message)
            raise ProbeFailed(
                FailureCode.SMTP_UNREACHABLE, f"server refused the session: {exc.code} {text}"
            ) from None
        except aiosmtplib.SMTPResponseException as exc:
            raise _not_smtp(exc.message) from None
        except aiosmtplib.SMTPConnectError as exc:
            cause = exc.__cause__ or exc
            if isinstance(cause, aiosmtplib.SMTPServerDisconnected):
                raise ProbeFailed(
                    FailureCode.SMTP_UNREACHABLE, "server closed the connection before its greeting"
                ) from None
            implicit = smtp.use_tls
            raise _connect_failure(cause, FailureCode.SMTP_UNREACHABLE, in_tls=implicit) from None

    async def _starttls(self, smtp: aiosmtplib.SMTP) -> None:
        await self._ehlo(smtp)
        if not smtp.supports_extension("starttls"):
            raise ProbeFailed(FailureCode.TLS_FAILED, "server does not offer STARTTLS")
        try:
            await smtp.starttls()  # verifies against `hostname` with our context
        except aiosmtplib.SMTPResponseException as exc:
            text = _printable(exc.message)
            raise ProbeFailed(
                FailureCode.TLS_FAILED, f"STARTTLS refused: {exc.code} {text}"
            ) from None
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise _connect_failure(
                exc.__cause__ or exc, FailureCode.SMTP_UNREACHABLE, in_tls=True, after_starttls=True
            ) from None

    async def _ehlo(self, smtp: aiosmtplib.SMTP) -> None:
        try:
            await smtp.ehlo()
        except aiosmtplib.SMTPResponseException as exc:
            text = _printable(exc.message)
            raise ProbeFailed(
                FailureCode.NOT_AN_SMTP_SERVER, f"EHLO refused: {exc.code} {text}"
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
            text = _printable(exc.message)
            raise ProbeFailed(
                FailureCode.SMTP_AUTH_FAILED, f"login rejected: {exc.code} {text}"
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
        else:
            # One mechanism only: aiosmtplib's login() falls through to the next one after a
            # rejection, doubling failed attempts (and the server's penalty) for a wrong password.
            wanted = {"plain": smtp.auth_plain, "login": smtp.auth_login}
        offered = smtp.server_auth_methods
        name = next((name for name in wanted if name in offered), None)
        if name is None:
            raise _not_offered(FailureCode.SMTP_AUTH_FAILED, self._credentials.mechanism, offered)
        return wanted[name]
