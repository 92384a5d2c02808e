"""What the IMAP and SMTP probes share: the vetted endpoint, the one failure type, the login
mechanisms, the read bounds, the loop that drives a conversation within one deadline, and the
try of the other security on the same port that tells a security mistake from a dead server."""

import asyncio
import base64
import contextlib
import enum
import ssl
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Final, Protocol, TypeVar

import aiosmtplib
import aiosmtplib.protocol
from aioimaplib import AioImapException, quoted
from aiosmtplib.auth import auth_login_encode, auth_plain_encode, auth_xoauth2_encode

from mailbox_link_contract.failures import FailureCode
from mailbox_link_contract.values import ConnectionSecurity

_T = TypeVar("_T")

# What a user-typed server may make us read, per connection (README "Read bounds"). A server
# that exceeds one is not the mail server it claims to be: the check fails at once, and what
# was buffered is freed with the connection. The IMAP probe counts every byte before aioimaplib
# sees it; aiosmtplib enforces its own line and reply bounds, which the SMTP ones name.
MAX_LINE_BYTES: Final = 8192  # RFC 7162 4: clients should accept lines of 8192 octets
MAX_RESPONSE_BYTES: Final = 64 * 1024  # a whole IMAP response, untagged lines included
MAX_LITERAL_BYTES: Final = 64 * 1024  # an IMAP {n} literal; none of our commands needs one
MAX_CHECK_BYTES: Final = 1024 * 1024  # everything one IMAP connection may send us
SMTP_MAX_LINE_BYTES: Final = aiosmtplib.protocol.MAX_LINE_LENGTH  # 8192 in aiosmtplib 5.1
SMTP_MAX_REPLY_BYTES: Final = aiosmtplib.protocol.MAX_RESPONSE_LENGTH  # 32768, continuations incl.
# LOGOUT / QUIT only happen after the credentials were proven, so they get a short grace period.
_GOODBYE_GRACE: Final = 1.0
# A reply that arrived together with a hang-up still counts; it needs a few loop turns to land.
_LATE_REPLY_GRACE: Final = 0.05
_IMAP_VERSIONS: Final = frozenset({"IMAP4REV1", "IMAP4REV2"})
# A mail server greets a plaintext connection at once; when no greeting came within this long,
# the port may be waiting for a TLS ClientHello (STARTTLS chosen on an implicit-TLS port), so
# the same port is asked over TLS beside the wait. It also bounds the plaintext try made when
# implicit TLS met a plaintext server. The verifier's grace for the other check (FAILURE_GRACE
# in imap-verifier) is built on it.
PLAINTEXT_GREETING_WAIT: Final = 2.0


@dataclass(frozen=True)
class Endpoint:
    """Where to connect (a vetted address) and which name TLS must prove."""

    hostname: str
    address: str
    port: int
    security: ConnectionSecurity


class ProbeFailed(Exception):
    """A probe did not get all the way to a logged-in session. `login_refused`: the server
    answered our credentials with a refusal (not: it offers no mechanism of ours)."""

    def __init__(self, code: FailureCode, detail: str, *, login_refused: bool = False) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self.login_refused = login_refused


# (endpoint, username, password or access token, TLS context, timeout in seconds)
Probe = Callable[[Endpoint, str, str, ssl.SSLContext, float], Awaitable[None]]


class _Mechanism(enum.Enum):
    """How a probe logs in; the value names it in failure details."""

    PASSWORD = "password login"  # noqa: S105 (names the mechanism in details)
    XOAUTH2 = "XOAUTH2"
    OAUTHBEARER = "OAUTHBEARER"  # RFC 7628


def _saslname(name: str) -> str:
    """A name as RFC 5801's gs2 header carries it: `=` and `,` escaped."""
    return name.replace("=", "=3D").replace(",", "=2C")


@dataclass(frozen=True)
class _Credentials:
    """Who logs in and how; the secret is kept out of repr (tracebacks, debug logs)."""

    mechanism: _Mechanism
    username: str
    secret: str = field(repr=False)
    # Where the probe connects, as OAUTHBEARER's response names it (RFC 7628 3.1).
    host: str = ""
    port: int = 0

    def initial_response(self) -> str:
        """The base64 SASL response: PLAIN (RFC 4616) for a password, else the token's."""
        if self.mechanism is _Mechanism.XOAUTH2:
            raw = f"user={self.username}\x01auth=Bearer {self.secret}\x01\x01"
        elif self.mechanism is _Mechanism.OAUTHBEARER:
            raw = (
                f"n,a={_saslname(self.username)},\x01host={self.host}\x01port={self.port}"
                f"\x01auth=Bearer {self.secret}\x01\x01"
            )
        else:
            raw = f"\0{self.username}\0{self.secret}"
        return base64.b64encode(raw.encode()).decode("ascii")

    def answer_to_rejection(self) -> bytes:
        """What answers the error challenge a server sends instead of refusing a token at
        once: XOAUTH2 wants an empty line, OAUTHBEARER a single %x01 (RFC 7628 3.2.3); only
        then comes the final refusal, instead of a hang. A password mechanism cancels (`*`)."""
        if self.mechanism is _Mechanism.XOAUTH2:
            return b""
        if self.mechanism is _Mechanism.OAUTHBEARER:
            return base64.b64encode(b"\x01")
        return b"*"

    def wire_forms(self) -> list[str]:
        """The secret in every form any probe sends it, longest first: raw, IMAP-quoted (with
        and without the quotes), SASL PLAIN / XOAUTH2 / OAUTHBEARER responses (ours and
        aiosmtplib's), and AUTH LOGIN's base64 of the password and of the username."""
        forms = {self.secret, quoted(self.secret), quoted(self.secret)[1:-1]}
        forms.add(self.initial_response())
        if self.mechanism is _Mechanism.XOAUTH2:
            forms.add(auth_xoauth2_encode(self.username, self.secret).decode("ascii"))
        elif self.mechanism is _Mechanism.PASSWORD:  # (aiosmtplib has no OAUTHBEARER)
            forms.add(auth_plain_encode(self.username, self.secret).decode("ascii"))
            forms.update(f.decode("ascii") for f in auth_login_encode(self.username, self.secret))
            # base64 of the password alone, also without its padding (a server may strip it).
            forms.add(base64.b64encode(self.secret.encode()).decode("ascii").rstrip("="))
        return sorted((form for form in forms if form), key=len, reverse=True)

    def redact(self, text: str) -> str:
        """Masks the secret, raw or in any form it was sent in on the wire, in a detail."""
        for form in self.wire_forms():
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
        detail = credentials.redact(failure.detail)
        raise ProbeFailed(failure.code, detail, login_refused=failure.login_refused) from None
    except (AioImapException, aiosmtplib.SMTPException, OSError) as exc:
        raise probe.unexpected(exc) from None
    finally:
        probe.close()


def _not_offered(code: FailureCode, mechanism: _Mechanism, offered: Iterable[str]) -> ProbeFailed:
    """Says the server lacks our way of logging in, and which ways it has instead."""
    listed = " ".join(sorted(name.upper() for name in offered)) or "none"
    return ProbeFailed(code, f"server does not offer {mechanism.value} (it offers {listed})")


def _too_much(what: str, limit: int) -> str:
    """The detail of a read bound a server exceeded."""
    return f"server sent more than {limit} bytes {what}"


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


# --- The other security on the same port ---------------------------------------------------

# Tells whether a line is the greeting of the protocol a probe speaks.
IsGreeting = Callable[[bytes], bool]


def _words(security: ConnectionSecurity) -> str:
    return "SSL/TLS" if security is ConnectionSecurity.SSL else "STARTTLS"


class _OtherAnswer(enum.Enum):
    """What the same port said when asked with the other security."""

    GREETING = "a greeting of the protocol"
    UNTRUSTED_TLS = "TLS, with a certificate that failed verification"
    NOTHING = "nothing that helps"


async def _ask_with(
    endpoint: Endpoint, security: ConnectionSecurity, tls: ssl.SSLContext, is_greeting: IsGreeting
) -> _OtherAnswer:
    """Connects to the same vetted address and port with `security` (implicit TLS, or
    plaintext for STARTTLS) and reads one line, bounded like any probe's line; says whether it
    is the protocol's greeting. Never re-resolves, never sends a byte of its own (beyond the
    TLS handshake) and never logs in. The caller bounds the time."""
    implicit = security is ConnectionSecurity.SSL
    writer: asyncio.StreamWriter | None = None
    try:
        reader, writer = await asyncio.open_connection(
            endpoint.address,
            endpoint.port,
            ssl=tls if implicit else None,
            server_hostname=endpoint.hostname if implicit else None,
            limit=MAX_LINE_BYTES,
        )
        line = await reader.readline()
    except ssl.SSLCertVerificationError:
        # A certificate came back: the port speaks TLS, whatever else is wrong with it.
        return _OtherAnswer.UNTRUSTED_TLS if implicit else _OtherAnswer.NOTHING
    except (OSError, ValueError, asyncio.IncompleteReadError):
        return _OtherAnswer.NOTHING  # ValueError: a line over the bound
    finally:
        if writer is not None:
            writer.transport.abort()
    return _OtherAnswer.GREETING if is_greeting(line) else _OtherAnswer.NOTHING


def _mismatch(
    kind: str, endpoint: Endpoint, works: ConnectionSecurity, answer: _OtherAnswer
) -> ProbeFailed:
    """The failure naming the security that works on the typed port."""
    detail = (
        f"{kind} port {endpoint.port} expects {_words(works)}, not {_words(endpoint.security)}: "
        f"set its security to {works.value}"
    )
    if answer is _OtherAnswer.UNTRUSTED_TLS:
        detail += " (its certificate did not verify either)"
    return ProbeFailed(FailureCode.SECURITY_MISMATCH, detail)


async def _plaintext_greeting(
    greeting: "asyncio.Future[_T]",
    kind: str,
    endpoint: Endpoint,
    tls: ssl.SSLContext,
    is_greeting: IsGreeting,
) -> _T:
    """Awaits the greeting of a plaintext (STARTTLS) connection. If none came within
    PLAINTEXT_GREETING_WAIT, the same port is asked over implicit TLS beside the wait: a
    greeting (or a certificate) that way raises SECURITY_MISMATCH at once; otherwise the wait
    goes on, within the probe's one deadline. The caller owns `greeting` (never cancelled)."""
    await asyncio.wait((greeting,), timeout=PLAINTEXT_GREETING_WAIT)
    if greeting.done():
        return greeting.result()
    tls_try = asyncio.ensure_future(_ask_with(endpoint, ConnectionSecurity.SSL, tls, is_greeting))
    try:
        await asyncio.wait((greeting, tls_try), return_when=asyncio.FIRST_COMPLETED)
        if not greeting.done() and tls_try.result() is not _OtherAnswer.NOTHING:
            raise _mismatch(kind, endpoint, ConnectionSecurity.SSL, tls_try.result())
        return await greeting
    finally:
        if not tls_try.done():
            tls_try.cancel()
            await asyncio.wait((tls_try,))


async def _after_tls_failure(
    exc: BaseException,
    failure: ProbeFailed,
    kind: str,
    endpoint: Endpoint,
    tls: ssl.SSLContext,
    is_greeting: IsGreeting,
) -> ProbeFailed:
    """Implicit TLS failed to connect: if the handshake itself broke (not the certificate) and
    the same port greets in plaintext within PLAINTEXT_GREETING_WAIT, the port wants STARTTLS
    (SECURITY_MISMATCH); else the failure stands."""
    handshake_broke = failure.code is FailureCode.TLS_FAILED and not isinstance(
        exc, ssl.SSLCertVerificationError
    )
    if not handshake_broke or endpoint.security is not ConnectionSecurity.SSL:
        return failure
    answer = _OtherAnswer.NOTHING
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(PLAINTEXT_GREETING_WAIT):
            plain = ConnectionSecurity.STARTTLS
            answer = await _ask_with(endpoint, plain, tls, is_greeting)
    if answer is _OtherAnswer.GREETING:
        return _mismatch(kind, endpoint, ConnectionSecurity.STARTTLS, answer)
    return failure


# --- IMAP --------------------------------------------------------------------------------
