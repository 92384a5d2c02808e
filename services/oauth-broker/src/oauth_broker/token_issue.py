"""A fresh access token of a linked OAuth mailbox, for the registry's access endpoint
(docs/adr/0023): refreshed first when it expires within the margin asked for, through the one
refresh path of token_upkeep (its lease, its re-read, its reconnect), and handed out sealed,
bound to the mailbox's address: only services with the shared keys can open it.

Kept apart from token_upkeep.py: this module only decides when to call its refresh.
"""

import asyncio
import logging
import time
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum

from mailbox_link_contract.values import EncryptedSecret
from mailbox_link_shared.oidc_providers import SaslMechanism
from oauth_broker.domain.grants import GrantStatus, StoredGrant, TokenGrant
from oauth_broker.ports import BrokerDeps
from oauth_broker.token_upkeep import RefreshResult, refresh_grant

logger = logging.getLogger(__name__)

# How long an ask waits for another broker's refresh (or for MailboxLinked to activate a
# just-linked grant) before answering "retry shortly"; and how often it looks again.
WAIT_FOR_OTHERS = timedelta(seconds=5)
POLL_SECONDS = 0.2


class NotIssued(StrEnum):
    """Why no token was handed out."""

    NO_GRANT = "no_grant"  # no grant under this link id (a password mailbox, an unknown id)
    RECONNECT_REQUIRED = "reconnect_required"  # the provider refused a refresh for good
    UNAVAILABLE = "unavailable"  # the provider is down, or another refresh is still running


class TokenNotIssued(Exception):
    """No token: why, and for UNAVAILABLE when to ask again."""

    def __init__(self, reason: NotIssued, retry_after: timedelta | None = None) -> None:
        super().__init__(reason.value)
        self.reason = reason
        self.retry_after = retry_after


@dataclass(frozen=True)
class IssuedToken:
    """An access token sealed with the shared keys, bound to `address`; never printed open."""

    access_token: EncryptedSecret
    address: str
    expires_at: datetime
    sasl_mechanism: SaslMechanism
    refreshed: bool  # refreshed for this ask


async def issue_access_token(
    link_id: str,
    min_valid: timedelta,
    deps: BrokerDeps,
    wait_for_others: timedelta = WAIT_FOR_OTHERS,
) -> IssuedToken:
    """Returns the grant's access token, valid for at least `min_valid` (refreshed first
    otherwise), sealed; raises TokenNotIssued.

    After a refresh of its own the token is handed out even if the provider gives tokens
    shorter-lived than `min_valid` asked: no refresh would do better."""
    deadline = time.monotonic() + wait_for_others.total_seconds()
    refreshed = False
    while True:
        grant = await deps.store.get_grant(link_id)
        if grant is None:
            raise TokenNotIssued(NotIssued.NO_GRANT)
        if grant.status is GrantStatus.RECONNECT_REQUIRED:
            raise TokenNotIssued(NotIssued.RECONNECT_REQUIRED)
        now = deps.clock()
        if grant.expires_at >= now + min_valid or (refreshed and grant.expires_at > now):
            return _sealed(grant, refreshed, deps)
        if grant.status is GrantStatus.ACTIVE and not refreshed:
            if grant.retry_at is not None and grant.retry_at > now:
                # A refresh failed by no fault of the user moments ago: not hammered per ask.
                raise TokenNotIssued(NotIssued.UNAVAILABLE, grant.retry_at - now)
            # The one refresh path, with this ask's margin: under the grant's lease, re-read.
            result = await refresh_grant(grant, replace(deps, refresh_margin=min_valid))
            if result is RefreshResult.REFRESHED:
                refreshed = True
                continue
            if result is RefreshResult.RECONNECT_REQUIRED:
                raise TokenNotIssued(NotIssued.RECONNECT_REQUIRED)
            if result is RefreshResult.RETRYING:
                raise TokenNotIssued(NotIssued.UNAVAILABLE, await _retry_after(link_id, deps))
            # SKIPPED: another broker holds the lease, or refreshed it meanwhile: read again.
        # VERIFIED: linked at the registry, MailboxLinked not yet applied here; wait for it.
        if time.monotonic() >= deadline:
            raise TokenNotIssued(NotIssued.UNAVAILABLE, timedelta(seconds=1))
        await asyncio.sleep(POLL_SECONDS)


async def _retry_after(link_id: str, deps: BrokerDeps) -> timedelta:
    # The back-off the failed refresh set on the grant (its next try), at least a second.
    postponed = await deps.store.get_grant(link_id)
    retry_at = postponed.retry_at if postponed is not None else None
    wait = retry_at - deps.clock() if retry_at is not None else deps.refresh_backoff.delay(1)
    return max(wait, timedelta(seconds=1))


def mechanism_for(grant: StoredGrant, deps: BrokerDeps) -> SaslMechanism:
    """How the mailbox's servers take the token: XOAUTH2 at Google, Microsoft, Yahoo and
    AOL; what the operator configured for an OpenID provider (as the mailbox check uses)."""
    servers = (deps.mail_servers or {}).get(grant.provider_key)
    return servers.mechanism if servers is not None else SaslMechanism.XOAUTH2


def _sealed(grant: StoredGrant, refreshed: bool, deps: BrokerDeps) -> IssuedToken:
    tokens = TokenGrant.from_json(deps.secret_box.open(grant.sealed, context=grant.address))
    # Only the access token leaves: the refresh token never does.
    sealed = deps.secret_box.seal(tokens.access_token, context=grant.address)
    if refreshed:
        logger.info("link %s: access token refreshed for an access", grant.link_id)
    mechanism = mechanism_for(grant, deps)
    return IssuedToken(sealed, grant.address, grant.expires_at, mechanism, refreshed)
