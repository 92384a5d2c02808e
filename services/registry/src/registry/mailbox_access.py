"""Mailbox access for internal services (docs/adr/0023): what a service granted
`mailbox_access` needs to send and read as a linked mailbox. Its servers and, for a password
mailbox, the passwords of the verification it uses; for an OAuth mailbox, an access token the
broker keeps fresh, valid for at least the margin asked for.

Every ask that reaches here is rate-limited per caller key, recorded for audit (who, which
mailbox, its auth, the outcome, when; never the secret), counted and logged. A mailbox that
needs reconnecting gets no credential at all.
"""

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from mailbox_link_contract.events import AuthMethod, ServerSettings, utc_now
from mailbox_link_contract.values import EncryptedSecret
from mailbox_link_shared import metrics
from mailbox_link_shared.addresses import mailbox_key
from mailbox_link_shared.credentials import MailboxCredentials
from mailbox_link_shared.crypto import SecretBox, SecretCannotBeOpened
from mailbox_link_shared.rate_limits import Limit, RateLimiter, TooManyAttempts
from registry import handlers
from registry.domain.links import LinkRecord
from registry.ports import RegistryDeps

logger = logging.getLogger(__name__)

PASSWORD_MECHANISMS = ("PLAIN", "LOGIN")
RATE_LIMIT_NAME = "mailbox_access"  # the rate-limit metric's label (metrics.RATE_LIMITS)


class AccessOutcome(StrEnum):
    """How one ask ended (the audit's and the counter's word)."""

    GRANTED = "granted"
    NOT_FOUND = "not_found"  # no such mailbox in this account (or another account's)
    RECONNECT_REQUIRED = "reconnect_required"
    RATE_LIMITED = "rate_limited"
    UNAVAILABLE = "unavailable"  # the broker, or the mailbox's credentials, not usable now


@dataclass(frozen=True)
class AccessEntry:
    """One audit entry: never a secret."""

    key: str
    account_id: str
    mailbox_id: str
    auth: str  # password, oauth, or unknown (refused before the mailbox was found)
    outcome: AccessOutcome
    at: datetime


class AccessAudit(Protocol):
    """Where audit entries go (adapters/access_audit.py; a list in tests)."""

    async def record(self, entry: AccessEntry) -> None: ...
    async def forget_before(self, cutoff: datetime) -> int: ...


@dataclass(frozen=True)
class BrokerToken:
    """The broker's answer: the access token sealed to `address`."""

    access_token: EncryptedSecret
    address: str
    expires_at: datetime
    sasl_mechanism: str


class GrantNotFound(Exception):
    """The broker keeps no grant under this link id."""


class GrantRefused(Exception):
    """The provider refused the grant's refresh for good: the mailbox needs reconnecting."""


class BrokerUnavailable(Exception):
    """The broker did not answer, or cannot renew the token now; `retry_after` seconds."""

    def __init__(self, reason: str, retry_after: int | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class TokenBroker(Protocol):
    """The OAuth broker's token route (adapters/broker_client.py; faked in tests)."""

    async def access_token(self, link_id: str, min_valid_seconds: int) -> BrokerToken: ...


@dataclass(frozen=True)
class AccessDeps:
    """What the access endpoint works with; wired in bootstrap."""

    registry: RegistryDeps
    secret_box: SecretBox
    broker: TokenBroker
    audit: AccessAudit
    limiter: RateLimiter
    per_key: Limit  # asks per caller key per window
    default_min_valid_seconds: int = 300
    audit_retention: timedelta = timedelta(days=90)
    clock: Callable[[], datetime] = utc_now


class AccessRefused(Exception):
    """No credential: why, and for RATE_LIMITED and UNAVAILABLE when to ask again."""

    def __init__(self, outcome: AccessOutcome, retry_after: int | None = None) -> None:
        super().__init__(outcome.value)
        self.outcome = outcome
        self.retry_after = retry_after


@dataclass(frozen=True)
class MailboxAccess:
    """What an internal service gets: the mailbox's servers and its credential. `repr` never
    shows the secrets."""

    mailbox_id: str
    email: str
    auth: AuthMethod
    status: str
    imap: ServerSettings
    smtp: ServerSettings
    credentials: MailboxCredentials | None = None  # password mailboxes
    access_token: str | None = None  # OAuth mailboxes
    expires_at: datetime | None = None
    sasl_mechanism: str | None = None

    def __repr__(self) -> str:
        return f"MailboxAccess({self.mailbox_id}, {self.auth.value}, <redacted>)"

    def body(self) -> dict[str, Any]:
        """The JSON answer (holds the secret: only ever sent to the caller)."""
        imap = self.imap.model_dump(mode="json")
        smtp = self.smtp.model_dump(mode="json")
        answer: dict[str, Any] = {
            "mailbox_id": self.mailbox_id,
            "email": self.email,
            "auth": self.auth.value,
            "status": self.status,
        }
        if self.credentials is not None:
            imap["password"] = self.credentials.imap_password
            smtp["password"] = self.credentials.smtp_password
            return {**answer, "imap": imap, "smtp": smtp, "sasl_mechanisms": PASSWORD_MECHANISMS}
        return {
            **answer,
            "imap": imap,
            "smtp": smtp,
            "access_token": self.access_token,
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "sasl_mechanism": self.sasl_mechanism,
        }


async def access_mailbox(
    key: str,
    account_id: str,
    mailbox_id: str,
    min_valid_seconds: int | None,
    deps: AccessDeps,
) -> MailboxAccess:
    """Returns what `key`'s service needs to use the mailbox, or raises AccessRefused; every
    ask is audited, counted and logged, whatever its outcome."""
    auth = "unknown"
    try:
        await _take_budget(key, deps)
        record = await handlers.find_mailbox(account_id, mailbox_id, deps.registry)
        if record is None or record.mailbox is None:
            raise AccessRefused(AccessOutcome.NOT_FOUND)
        auth = record.mailbox.auth.value
        if record.mailbox.reconnect_required is not None:
            raise AccessRefused(AccessOutcome.RECONNECT_REQUIRED)
        margin = deps.default_min_valid_seconds if min_valid_seconds is None else min_valid_seconds
        if record.mailbox.auth is AuthMethod.OAUTH:
            granted = await _oauth_access(record, margin, deps)
        else:
            granted = await _password_access(record, deps)
    except AccessRefused as refused:
        await _note(key, account_id, mailbox_id, auth, refused.outcome, deps)
        raise
    # Recorded before the secret leaves: an ask the audit cannot record gets nothing.
    await _note(key, account_id, mailbox_id, auth, AccessOutcome.GRANTED, deps)
    return granted


async def forget_old_entries(deps: AccessDeps) -> int:
    """Deletes audit entries past their retention; returns how many."""
    return await deps.audit.forget_before(deps.clock() - deps.audit_retention)


def key_budget(key: str) -> str:
    """The rate-limit key of one caller key, by its name (hashed, as every limit key is)."""
    digest = hashlib.sha256(f"access\x1f{key}".encode("utf-8", "surrogatepass")).hexdigest()
    return f"access-key-{digest[:32]}"


async def _take_budget(key: str, deps: AccessDeps) -> None:
    now = deps.clock()
    try:
        await deps.limiter.take(key_budget(key), deps.per_key, now)
    except TooManyAttempts as over:
        wait = max(1, int((over.retry_at - now).total_seconds() + 0.999))
        raise AccessRefused(AccessOutcome.RATE_LIMITED, wait) from None


async def _password_access(record: LinkRecord, deps: AccessDeps) -> MailboxAccess:
    mailbox = record.mailbox
    assert mailbox is not None
    verified_by = mailbox.verified_by or record.link_id
    verification = await deps.registry.store.get_verification(verified_by)
    if verification is None or verification.credentials is None:
        logger.error("mailbox %s: no sealed credentials kept (link %s)", mailbox.mailbox_id,
                     verified_by)  # fmt: skip
        raise AccessRefused(AccessOutcome.UNAVAILABLE, 2)
    # Sealed by link-api bound to the address its link request named: the mailbox's link's,
    # or its reconnect's (another spelling of the same mailbox, ADR 0019).
    contexts = [record.address]
    if verified_by != record.link_id:
        reconnect = await deps.registry.store.get_link(verified_by)
        if reconnect is not None:
            contexts.insert(0, reconnect.address)
    credentials = MailboxCredentials.from_json(
        _open(verification.credentials, contexts, deps, mailbox.mailbox_id)
    )
    return MailboxAccess(
        mailbox_id=mailbox.mailbox_id,
        email=record.address,
        auth=mailbox.auth,
        status=_status(record),
        imap=verification.imap,
        smtp=verification.smtp,
        credentials=credentials,
    )


async def _oauth_access(record: LinkRecord, margin: int, deps: AccessDeps) -> MailboxAccess:
    mailbox = record.mailbox
    assert mailbox is not None
    # The grant is under the mailbox's link (a reconnect hands its tokens over, ADR 0019),
    # or, when the mailbox kept none, under the reconnect link that verified it.
    candidates = [record.link_id]
    if mailbox.verified_by and mailbox.verified_by != record.link_id:
        candidates.append(mailbox.verified_by)
    token: BrokerToken | None = None
    try:
        for link_id in candidates:
            try:
                token = await deps.broker.access_token(link_id, margin)
                break
            except GrantNotFound:
                continue
    except GrantRefused:
        # The broker announces MailboxReconnectRequired; the flag here follows shortly.
        raise AccessRefused(AccessOutcome.RECONNECT_REQUIRED) from None
    except BrokerUnavailable as away:
        logger.warning("mailbox %s: the broker cannot issue a token now (%s)",
                       mailbox.mailbox_id, away)  # fmt: skip
        raise AccessRefused(AccessOutcome.UNAVAILABLE, away.retry_after or 2) from None
    if token is None:
        logger.error("mailbox %s: the broker keeps no grant for it", mailbox.mailbox_id)
        raise AccessRefused(AccessOutcome.UNAVAILABLE, 2)
    if mailbox_key(token.address) != mailbox_key(record.address):
        logger.error("mailbox %s: the broker answered another mailbox's token", mailbox.mailbox_id)
        raise AccessRefused(AccessOutcome.UNAVAILABLE, 2)
    access_token = _open(token.access_token, [token.address], deps, mailbox.mailbox_id)
    return MailboxAccess(
        mailbox_id=mailbox.mailbox_id,
        email=record.address,
        auth=mailbox.auth,
        status=_status(record),
        imap=mailbox.imap,
        smtp=mailbox.smtp,
        access_token=access_token,
        expires_at=token.expires_at,
        sasl_mechanism=token.sasl_mechanism,
    )


def _open(
    sealed: EncryptedSecret, contexts: Sequence[str], deps: AccessDeps, mailbox_id: str
) -> str:
    for context in contexts:
        try:
            return deps.secret_box.open(sealed, context)
        except SecretCannotBeOpened:
            continue
    # A retired key (MBL_ENCRYPTION_KEYS), or a ciphertext of another mailbox: the operators'.
    logger.error("mailbox %s: its sealed credential does not open with the configured keys",
                 mailbox_id)  # fmt: skip
    raise AccessRefused(AccessOutcome.UNAVAILABLE, 2)


def _status(record: LinkRecord) -> str:
    # A degraded mailbox is still answered: its servers were unreachable, not its credentials
    # refused, and the caller may try (ADR 0023); the status tells it to expect failures.
    mailbox = record.mailbox
    return mailbox.health.value if mailbox else "active"


async def _note(
    key: str, account_id: str, mailbox_id: str, auth: str, outcome: AccessOutcome, deps: AccessDeps
) -> None:
    entry = AccessEntry(key, account_id, mailbox_id, auth, outcome, deps.clock())
    metrics.mailbox_access(auth, outcome.value)
    logger.info("mailbox access by key %s to mailbox %s (%s): %s", key, mailbox_id, auth,
                outcome.value)  # fmt: skip
    await deps.audit.record(entry)
