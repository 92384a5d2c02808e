"""Tokens after the sign-in: kept fresh once the registry links the mailbox, forgotten when
it rejects the link, revoked when it is unlinked, and a reconnect announced when the provider
refuses them for good."""

import logging
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum

from mailbox_link_contract.events import (
    Failure,
    LinkRejected,
    MailboxLinked,
    MailboxReconnectRequired,
    MailboxReconnectRequiredData,
    MailboxUnlinked,
    ProviderType,
)
from mailbox_link_contract.failures import FailureCode
from mailbox_link_shared import metrics
from mailbox_link_shared.metrics import provider_label
from mailbox_link_shared.tracing import LINK_ID, set_attributes, span
from oauth_broker.config import SERVICE_NAME
from oauth_broker.domain.grants import (
    GrantStatus,
    StoredGrant,
    TokenGrant,
)
from oauth_broker.domain.outcomes import (
    ProviderRefused,
    ProviderUnreachable,
    TokenFailure,
    classify_token_failure,
)
from oauth_broker.ports import BrokerDeps

logger = logging.getLogger(__name__)

# How long one broker may take to refresh a grant before another may try (a broker that dies
# mid-refresh holds it no longer). Retries after a failure wait for the grant's back-off.
_REFRESH_LEASE = timedelta(minutes=1)


class RefreshResult(StrEnum):
    """How one due grant's refresh ended."""

    REFRESHED = "refreshed"
    RECONNECT_REQUIRED = "reconnect_required"  # the user's grant is gone: final
    RETRYING = "retrying"  # not the user's trouble: tried again after the back-off
    SKIPPED = "skipped"  # another broker has it, or it is no longer due


@dataclass
class RefreshTally:
    """One round of refreshes, for the housekeeping summary."""

    refreshed: int = 0
    failed_for_good: int = 0
    retrying: int = 0
    broke: int = 0  # a bug or a retired sealing key; logged with the link

    def count(self, result: RefreshResult) -> None:
        """Adds one grant's result."""
        if result is RefreshResult.REFRESHED:
            self.refreshed += 1
        elif result is RefreshResult.RECONNECT_REQUIRED:
            self.failed_for_good += 1
        elif result is RefreshResult.RETRYING:
            self.retrying += 1

    @property
    def any(self) -> bool:
        """True when the round did anything worth a log line."""
        return bool(self.refreshed or self.failed_for_good or self.retrying or self.broke)


async def when_mailbox_linked_keep_fresh(event: MailboxLinked, deps: BrokerDeps) -> None:
    """Starts refreshing the grant of a link the registry linked."""
    if event.data.provider is ProviderType.IMAP:
        return  # a password mailbox: no grant to keep fresh
    if await deps.store.activate_grant(event.data.link_id, event.data.mailbox_id):
        logger.info("link %s linked: its tokens are kept fresh", event.data.link_id)


async def when_link_rejected_discard(event: LinkRejected, deps: BrokerDeps) -> None:
    """Closes the link's sign-in and deletes tokens it no longer needs.

    Not revoked at the provider: Google revokes a user's whole grant to our app, which would
    cut off the mailbox this user (already_linked) or another account already has linked.
    """
    link_id = event.data.link_id
    ended = await deps.store.end_session(link_id)
    deleted = await deps.store.delete_grant(link_id)
    if ended or deleted:
        logger.info("link %s rejected: sign-in closed, tokens deleted", link_id)


async def when_mailbox_unlinked_revoke(event: MailboxUnlinked, deps: BrokerDeps) -> None:
    """Revokes the unlinked mailbox's tokens where the provider offers it, then deletes them."""
    link_id = event.data.link_id
    grant = await deps.store.get_grant(link_id) if link_id else None
    if grant is None or link_id is None:
        return  # a password mailbox, or already done
    tokens = TokenGrant.from_json(deps.secret_box.open(grant.sealed, context=grant.address))
    client = deps.clients.get(grant.provider_key)
    revoked = False
    if client is not None:
        try:
            revoked = await client.revoke(tokens.refresh_token)
        except (ProviderRefused, ProviderUnreachable) as exc:
            # The tokens are deleted anyway, so nothing here can use them again.
            logger.warning("link %s: revocation failed (%s)", link_id, exc)
    await deps.store.delete_grant(link_id)
    logger.info("link %s unlinked: tokens %s and deleted", link_id,
                "revoked" if revoked else "not revocable")  # fmt: skip


async def refresh_due_grants(deps: BrokerDeps) -> RefreshTally:
    """Refreshes every active grant whose access token expires within the margin (and whose
    back-off, after a failure that was not the user's, has passed)."""
    now = deps.clock()
    due = await deps.store.grants_due(now + deps.refresh_margin, now)
    tally = RefreshTally()
    for grant in due:
        try:
            tally.count(await refresh_grant(grant, deps))
        except Exception as exc:
            # One grant's trouble (a retired sealing key, a bug) must not stall the others.
            tally.broke += 1
            logger.error("link %s: refresh broke: %s", grant.link_id, type(exc).__name__)
    return tally


async def refresh_grant(grant: StoredGrant, deps: BrokerDeps) -> RefreshResult:
    """Renews one grant. The user's grant gone for good marks the mailbox reconnect_required;
    any other failure (our app refused, the provider down or unreachable) is retried later."""
    now = deps.clock()
    if not await deps.store.lease_refresh(grant.link_id, now, now + _REFRESH_LEASE):
        return RefreshResult.SKIPPED  # another broker is refreshing it
    # Read again under the lease: another broker may have refreshed it since `grant` was read,
    # and an old (rotated) refresh token would now be refused as if access were revoked.
    current = await deps.store.get_grant(grant.link_id)
    due_by = now + deps.refresh_margin
    if current is None or current.status is not GrantStatus.ACTIVE or current.expires_at >= due_by:
        return RefreshResult.SKIPPED
    grant = current
    tokens = TokenGrant.from_json(deps.secret_box.open(grant.sealed, context=grant.address))
    # A trace of its own (a timer's work, maybe days after the link's): the link id and the
    # kind of provider only, never a token or the address.
    attributes = {LINK_ID: grant.link_id, "oauth.provider": provider_label(grant.provider)}
    with span("oauth token refresh", attributes=attributes):
        return await _refresh(grant, tokens, deps)


async def _refresh(grant: StoredGrant, tokens: TokenGrant, deps: BrokerDeps) -> RefreshResult:
    try:
        fresh = await deps.clients[grant.provider_key].refresh(tokens.refresh_token, deps.clock())
    except (ProviderRefused, ProviderUnreachable) as failed:
        trouble = classify_token_failure(failed)
        code = _REFRESH_FAILURE_CODES[trouble]
        metrics.oauth_refresh(grant.provider.value, code)
        set_attributes(**{"oauth.result": metrics.result_of(code)})
        if trouble is TokenFailure.USER_GRANT:
            await _require_reconnect(grant, str(failed), deps)
            return RefreshResult.RECONNECT_REQUIRED
        await _retry_later(grant, trouble, failed, deps)
        return RefreshResult.RETRYING
    metrics.oauth_refresh(grant.provider.value, None)
    set_attributes(**{"oauth.result": metrics.OK})
    renewed = tokens.renewed(fresh.access_token, fresh.expires_at, fresh.refresh_token)
    sealed = deps.secret_box.seal(renewed.to_json(), context=grant.address)
    if not await deps.store.renew_grant(
        grant.link_id, sealed, renewed.expires_at, replacing=grant.sealed
    ):
        # A reconnect handed the grant new tokens (or it ended) while this refresh ran: the
        # new ones win; these refreshed old ones are dropped.
        logger.info("link %s: tokens replaced during a refresh, kept the new", grant.link_id)
        return RefreshResult.SKIPPED
    if grant.refresh_failures:
        logger.info(
            "link %s: refresh at %s works again after %d failures",
            grant.link_id, grant.provider.value, grant.refresh_failures,
        )  # fmt: skip
    return RefreshResult.REFRESHED


# The refresh metric's result per trouble: our app refused is the operators' to fix.
_REFRESH_FAILURE_CODES = {
    TokenFailure.USER_GRANT: FailureCode.RECONNECT_REQUIRED,
    TokenFailure.OUR_APP: FailureCode.DEPLOYMENT_MISCONFIGURED,
    TokenFailure.PROVIDER_DOWN: FailureCode.PROVIDER_ERROR,
    TokenFailure.NETWORK: FailureCode.PROVIDER_ERROR,
}


async def _retry_later(
    grant: StoredGrant,
    trouble: TokenFailure,
    failed: ProviderRefused | ProviderUnreachable,
    deps: BrokerDeps,
) -> None:
    # Not the user's doing: the mailbox stays linked; operators see it (WARNING, the grant's
    # refresh_failures and last_refresh_error) and the refresh is tried again after a wait.
    failures = grant.refresh_failures + 1
    retry_at = deps.clock() + deps.refresh_backoff.delay(failures)
    error = failed.error if isinstance(failed, ProviderRefused) else "unreachable"
    await deps.store.postpone_refresh(grant.link_id, failures, retry_at, error)
    logger.warning(
        "link %s: refresh at %s failed with %s, %s trouble (%s); not the user's: failure %d "
        "in a row, retrying at %s",
        grant.link_id, grant.provider.value, error, trouble.value, failed, failures,
        retry_at.isoformat(),
    )  # fmt: skip


async def _require_reconnect(grant: StoredGrant, detail: str, deps: BrokerDeps) -> None:
    # Published before the grant is marked: a crash in between repeats the event next round
    # (consumers deduplicate, the registry's flag is idempotent) instead of losing it.
    if grant.mailbox_id is None:
        return
    current = await deps.store.get_grant(grant.link_id)
    if current is None or current.sealed != grant.sealed:
        return  # a reconnect handed it new tokens while the refused refresh ran
    data = MailboxReconnectRequiredData(
        mailbox_id=grant.mailbox_id,
        link_id=grant.link_id,
        owner=grant.owner,
        address=grant.address,
        provider=grant.provider,
        failure=Failure.of(FailureCode.RECONNECT_REQUIRED, f"token refresh answered {detail}"),
    )
    await deps.publisher.publish(
        MailboxReconnectRequired(correlation_id=grant.link_id, producer=SERVICE_NAME, data=data)
    )
    await deps.store.mark_reconnect_required(grant.link_id)
    logger.info("link %s: reconnect required (%s)", grant.link_id, detail)
