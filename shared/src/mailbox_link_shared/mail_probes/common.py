"""What the IMAP and SMTP probes share: the vetted endpoint, the one failure type, the login
mechanisms and the loop that drives a conversation within one deadline."""

import asyncio
import base64
import enum
import ssl
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Final, Protocol, TypeVar

import aiosmtplib
from aioimaplib import AioImapException

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
