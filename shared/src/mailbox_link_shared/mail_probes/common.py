"""What the IMAP and SMTP probes share: the vetted endpoint, the one failure type, the login
mechanisms, the read bounds and the loop that drives a conversation within one deadline."""

import asyncio
import base64
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

    def wire_forms(self) -> list[str]:
        """The secret in every form any probe sends it, longest first: raw, IMAP-quoted (with
        and without the quotes), SASL PLAIN / XOAUTH2 responses (ours and aiosmtplib's), and
        AUTH LOGIN's base64 of the password and of the username."""
        forms = {self.secret, quoted(self.secret), quoted(self.secret)[1:-1]}
        forms.add(self.initial_response())
        if self.mechanism is _Mechanism.XOAUTH2:
            forms.add(auth_xoauth2_encode(self.username, self.secret).decode("ascii"))
        else:
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
        raise ProbeFailed(failure.code, credentials.redact(failure.detail)) from None
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


# --- IMAP --------------------------------------------------------------------------------
