"""The IMAP probe: greeting, STARTTLS, CAPABILITY, LOGIN or AUTHENTICATE (PLAIN, XOAUTH2,
OAUTHBEARER), and EXAMINE INBOX, each reply read within bounds and classified into a failure
code; a greeting missing in plaintext, or TLS meeting a plaintext server, asks the same port
with the other security (SECURITY_MISMATCH)."""

import asyncio
import collections
import contextlib
import logging
import re
import ssl
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Final

from aioimaplib import AUTH, AioImapException, Command, IMAP4ClientProtocol, quoted

from mailbox_link_contract.failures import FailureCode
from mailbox_link_contract.values import ConnectionSecurity
from mailbox_link_shared.mail_probes.common import (
    _GOODBYE_GRACE,
    _IMAP_VERSIONS,
    _LATE_REPLY_GRACE,
    _T,
    MAX_CHECK_BYTES,
    MAX_LINE_BYTES,
    MAX_LITERAL_BYTES,
    MAX_RESPONSE_BYTES,
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

KIND: Final = "IMAP"

# aioimaplib logs, at INFO, any server line it does not expect, and at DEBUG everything it
# reads and most of what it sends: an echoing server would put our LOGIN line (the password,
# IMAP-quoted) into the service's log. Nothing it logs below WARNING is worth that.
logging.getLogger("aioimaplib").setLevel(logging.WARNING)

# Response codes (RFC 9051 7.1, RFC 5530) that may be named in a detail: a classified reason
# rather than server text, which could be anything, the echoed password included.
_RESPONSE_CODES: Final = frozenset(
    {
        "ALERT", "ALREADYEXISTS", "AUTHENTICATIONFAILED", "AUTHORIZATIONFAILED", "BADCHARSET",
        "CANNOT", "CLIENTBUG", "CONTACTADMIN", "CORRUPTION", "EXPIRED", "EXPUNGEISSUED",
        "HASCHILDREN", "INUSE", "LIMIT", "NONEXISTENT", "NOPERM", "OVERQUOTA", "PARSE",
        "PRIVACYREQUIRED", "READ-ONLY", "READ-WRITE", "SERVERBUG", "TRYCREATE", "UNAVAILABLE",
        "UNKNOWN-CTE",
    }
)  # fmt: skip
_RESPONSE_CODE: Final = re.compile(rb"^\[([A-Za-z-]{1,30})[] ]")
# The end of a line announcing a literal: `{n}` CRLF. A digit run reaching the start of the
# kept tail is a size too long to be honest.
_LITERAL_END: Final = re.compile(rb"(\{?)([0-9]+)\}\r\n$")
_TAIL: Final = 24


def _response_code(text: bytes) -> str:
    """The response code of a status text, as `[CODE]`, if it is a known one; else ""."""
    match = _RESPONSE_CODE.match(text.lstrip())
    if match is None:
        return ""
    code = match.group(1).decode("ascii").upper()
    return f" [{code}]" if code in _RESPONSE_CODES else ""


class _ReadBounds:
    """Counts what an IMAP server sends, before aioimaplib buffers any of it, and names the
    bound it exceeds: line length (literals excluded), response size (from the end of the
    last tagged or `+` line, untagged lines and literals included), literal size (refused as
    soon as announced) and the connection's total."""

    def __init__(self) -> None:
        self.total = 0
        self.restart()

    def restart(self) -> None:
        """Forgets a partial line and response (STARTTLS drops the plaintext rest)."""
        self._response = 0
        self._line = 0
        self._literal_left = 0
        self._head = b""  # the line's first byte: `*` untagged, else it ends a response
        self._tail = b""  # the line's last bytes: a CRLF, a literal announcement
        self._continued = False  # the line goes on after a literal

    def feed(self, data: bytes) -> str | None:
        self.total += len(data)
        self._response += len(data)
        if self.total > MAX_CHECK_BYTES:
            return _too_much("in one check", MAX_CHECK_BYTES)
        start = 0
        while start < len(data):
            if self._literal_left:
                taken = min(self._literal_left, len(data) - start)
                self._literal_left -= taken
                start += taken
                continue
            newline = data.find(b"\n", start)
            end = len(data) if newline == -1 else newline + 1
            piece = data[start:end]
            if not self._head and not self._continued:
                self._head = piece[:1]
            self._line += len(piece)
            self._tail = (self._tail + piece)[-_TAIL:]
            start = end
            if self._line > MAX_LINE_BYTES:
                return _too_much("in one line", MAX_LINE_BYTES)
            if newline == -1 or not self._tail.endswith(b"\r\n"):
                continue  # aioimaplib, too, only ends a line at CRLF
            exceeded = self._line_ended(len(data) - start)
            if exceeded is not None:
                return exceeded
        if self._response > MAX_RESPONSE_BYTES:
            return _too_much("in one response", MAX_RESPONSE_BYTES)
        return None

    def _line_ended(self, rest: int) -> str | None:
        literal = _LITERAL_END.search(self._tail)
        self._line, self._tail = 0, b""
        if literal is not None and (literal.group(1) or literal.start() == 0):
            size = int(literal.group(2)) if literal.group(1) else MAX_LITERAL_BYTES + 1
            if size > MAX_LITERAL_BYTES:
                return _too_much("in one literal", MAX_LITERAL_BYTES)
            self._literal_left, self._continued = size, True
            return None
        if self._head != b"*":
            # A tagged status or a continuation request ends what the server had to say;
            # only what came after it in this read counts toward the next response.
            self._response = rest
        self._head, self._continued = b"", False
        return None


async def _awaited(awaitable: Awaitable[_T]) -> _T:
    return await awaitable


def _classify_greeting(greeting: bytes) -> ProbeFailed | None:
    """Tells IMAP from the other mail protocols before aioimaplib sees a byte.

    aioimaplib answers a POP3 greeting with CAPABILITY and then waits for ever, so anything
    that is not an IMAP greeting must be stopped here. Nothing of a greeting is quoted back:
    a detail must not tell a port scanner what listens there.
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
        code = _response_code(greeting[5:])
        return ProbeFailed(FailureCode.IMAP_UNREACHABLE, f"server refused the session (BYE{code})")
    if head.startswith(b"220"):
        return ProbeFailed(FailureCode.NOT_AN_IMAP_SERVER, "this is an SMTP port (greeting 220)")
    return ProbeFailed(FailureCode.NOT_AN_IMAP_SERVER, "not an IMAP greeting")


def _is_imap_greeting(line: bytes) -> bool:
    """An IMAP server's welcome (OK or PREAUTH), as the other-security try recognises it."""
    return line[:16].upper().startswith((b"* OK", b"* PREAUTH"))


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
        self.bounds = _ReadBounds()
        # Set when the server exceeded a read bound; the session is over from then on.
        self.exceeded: ProbeFailed | None = None

    def data_received(self, data: bytes) -> None:
        if self.exceeded is not None:
            return
        too_much = self.bounds.feed(data)
        if too_much is not None:
            self.exceeded = ProbeFailed(FailureCode.NOT_AN_IMAP_SERVER, too_much)
            self._fail(self.exceeded.code, self.exceeded.detail)
            if not self.greeting.done():
                self.greeting.set_result(b"")
            # Drops the buffers with the connection: nothing more is read or kept.
            self._held = None
            self.incomplete_line = b""
            self.transport.abort()
            return
        if self._held is None:
            self._feed(data)
            return
        self._held += data
        if b"\n" in self._held and not self.greeting.done():
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
    # The status and its known response code, e.g. "NO [AUTHENTICATIONFAILED]"; never the
    # server's free text, which may echo what we sent.
    reason: str

    @classmethod
    def of(cls, response: Any) -> "_Reply":
        lines = [line for line in response.lines if isinstance(line, bytes | bytearray)]
        result = str(response.result)
        status = result if result in {"OK", "NO", "BAD"} else "unexpected status"
        return cls(result, status + (_response_code(bytes(lines[-1])) if lines else ""))


class _ImapProbe:
    def __init__(self, endpoint: Endpoint, credentials: _Credentials, tls: ssl.SSLContext):
        self.verified = False
        self._endpoint = endpoint
        self._credentials = credentials
        self._tls = tls
        self._loop = asyncio.get_running_loop()
        self._proto = _ImapProtocol(self._loop)
        self._transports: list[asyncio.BaseTransport] = []

    async def _log_in(self) -> None:
        """Connects, checks the greeting and capabilities, and logs in (also for the inbox
        search of the ownership proof)."""
        await self._connect()
        greeting = await self._greeting()
        failure = self._proto.exceeded or _classify_greeting(greeting)
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

    async def run(self) -> None:
        await self._log_in()
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
            failure = _connect_failure(exc, FailureCode.IMAP_UNREACHABLE, in_tls=implicit)
            raise await _after_tls_failure(
                exc, failure, KIND, self._endpoint, self._tls, _is_imap_greeting
            ) from None
        self._transports.append(transport)

    async def _greeting(self) -> bytes:
        """The server's first line; in plaintext, SECURITY_MISMATCH if it never comes but the
        port greets over TLS."""
        if self._endpoint.security is ConnectionSecurity.SSL:
            return await self._proto.greeting
        return await _plaintext_greeting(
            self._proto.greeting, KIND, self._endpoint, self._tls, _is_imap_greeting
        )

    async def _starttls(self) -> None:
        if self._proto.state == AUTH:
            # A plaintext PREAUTH cannot be secured any more (and may be injected).
            raise ProbeFailed(FailureCode.TLS_FAILED, "server sent PREAUTH before STARTTLS")
        if "STARTTLS" not in self._capabilities():
            raise ProbeFailed(FailureCode.TLS_FAILED, "server does not offer STARTTLS")
        reply = await self._execute(self._command("STARTTLS"))
        if reply.result != "OK":
            raise ProbeFailed(FailureCode.TLS_FAILED, f"STARTTLS refused ({reply.reason})")
        # Anything after the OK came in plaintext and may be injected: drop it (RFC 2595 3.1).
        self._proto.incomplete_line = b""
        self._proto.bounds.restart()
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
        if self._credentials.mechanism is not _Mechanism.PASSWORD:
            command, secret = self._token_command()
        else:
            command, secret = self._password_command()
        # Sent through execute() rather than aioimaplib's login()/xoauth2(): login() scrubs the
        # raw password from its debug log but sends the quoted one, so an escaped password
        # leaks; xoauth2() never answers the error challenge, so a bad token hangs.
        reply = await self._execute(command, scrub=secret)
        if reply.result != "OK":
            raise ProbeFailed(
                FailureCode.IMAP_AUTH_FAILED,
                f"login rejected ({reply.reason})",
                login_refused=True,
            )
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

    def _token_command(self) -> tuple[Any, str | None]:
        """AUTHENTICATE XOAUTH2 or OAUTHBEARER with the access token."""
        mechanism = self._credentials.mechanism
        if f"AUTH={mechanism.value}" not in self._capabilities():
            raise _not_offered(FailureCode.IMAP_AUTH_FAILED, mechanism, self._sasl())
        # A rejected token comes back as a `+` challenge carrying the error; the mechanism's
        # answer to it (empty, or %x01) brings the tagged NO.
        self._proto.sasl_after_rejection = self._credentials.answer_to_rejection()
        return self._authenticate(mechanism.value)

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
                FailureCode.NOT_AN_IMAP_SERVER, f"INBOX could not be opened ({reply.reason})"
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
        # Always a Task of our own: a cancelled gather() ends with a CancelledError as its
        # exception rather than cancelled, which would escape below as a crash.
        task = asyncio.ensure_future(_awaited(awaitable))
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
