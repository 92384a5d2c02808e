"""Health checks of OAuth mailboxes (docs/adr/0023): the registry asks, the broker refreshes the
mailbox's grant when it is due (through the token upkeep's own refresh, under its lease) and
logs in to IMAP and SMTP with the access token, then answers MailboxChecked.

What a check answers, by what it finds:
- the logins work: no failure;
- a login refused or failed: the probe's code (imap_auth_failed, imap_unreachable, timeout...);
- the refresh refused for good (invalid_grant...): reconnect_required. The upkeep's refresh has
  then published MailboxReconnectRequired already, so the check does not publish it again;
- the refresh failed by no fault of the user (provider down or unreachable, our app refused):
  provider_error or deployment_misconfigured (also when the provider is not loaded), so the
  registry only degrades the mailbox;
- no grant kept for the mailbox (deleted, never handed over): reconnect_required, since no
  token exists to use it with and only the user can give us one by reconnecting.
"""

import asyncio
import logging
import re
from datetime import datetime

from mailbox_link_contract.events import (
    AuthMethod,
    Failure,
    MailboxCheckRequested,
    MailboxCheckRequestedData,
)
from mailbox_link_contract.failures import FailureCode
from mailbox_link_shared import metrics
from mailbox_link_shared.health_checks import run_mailbox_check
from mailbox_link_shared.mail_probes import ProbeFailed
from mailbox_link_shared.oidc_providers import SaslMechanism
from mailbox_link_shared.tracing import LINK_ID
from oauth_broker.config import SERVICE_NAME
from oauth_broker.domain.grants import GrantStatus, StoredGrant, TokenGrant
from oauth_broker.ports import BrokerDeps
from oauth_broker.token_upkeep import RefreshResult, refresh_grant

logger = logging.getLogger(__name__)

# How often a check waiting for another refresher (its lease) reads the grant again.
_LEASE_POLL_SECONDS = 0.2
# A refresh refused by the provider for our app itself: the operators' to mend (token_upkeep
# stores the OAuth error code in last_refresh_error; "unreachable" when nothing answered).
_OUR_APP_ERRORS = frozenset({"invalid_client", "unauthorized_client"})
# An OAuth error code (RFC 6749 5.2: printable ASCII; in practice snake case) is quoted in a
# failure's detail; anything else a provider sent is not.
_OAUTH_ERROR = re.compile(r"[a-z0-9_.-]{1,64}")


class CheckFailed(Exception):
    """The check ends with this failure before any login."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.code)
        self.failure = failure


async def when_check_requested_refresh_and_log_in(
    event: MailboxCheckRequested, deps: BrokerDeps
) -> None:
    """Runs an OAuth mailbox's health check: a refresh when due, then the IMAP and SMTP logins
    with the access token; answers MailboxChecked with the failure, if any."""
    data = event.data
    if data.auth is not AuthMethod.OAUTH:
        return  # a password mailbox: the imap-verifier checks it
    attributes = {
        LINK_ID: data.link_id,
        "mailbox_link.auth": data.auth.value,
        "oauth.provider": metrics.provider_label(data.provider.value),
    }
    checked = await run_mailbox_check(
        SERVICE_NAME, event, attributes, lambda: _run_check(data, deps)
    )
    await deps.publisher.publish(checked)


async def _run_check(data: MailboxCheckRequestedData, deps: BrokerDeps) -> Failure | None:
    """The check's failure, or None when both logins worked."""
    try:
        grant = await _grant_of(data, deps)
        fresh = await _fresh(grant, deps)
        tokens = TokenGrant.from_json(deps.secret_box.open(fresh.sealed, context=fresh.address))
        await deps.check_mailbox(data.imap, data.smtp, tokens.access_token, _mechanism(fresh, deps))
    except CheckFailed as ended:
        logger.info("check %s of mailbox %s failed: %s (%s)",
                    data.check_id, data.mailbox_id, ended.failure.code,
                    ended.failure.detail)  # fmt: skip
        return ended.failure
    except ProbeFailed as failed:
        logger.info("check %s of mailbox %s failed: %s (%s)",
                    data.check_id, data.mailbox_id, failed.code, failed.detail)  # fmt: skip
        return Failure.of(failed.code, failed.detail)
    except Exception as exc:
        # A bug, a retired sealing key, the store away: answered (the registry degrades the
        # mailbox and tries again), never a credential verdict. Only the type is logged.
        logger.error("check %s could not be run: %s", data.check_id, type(exc).__name__)
        return Failure.of(FailureCode.INTERNAL_ERROR, type(exc).__name__)
    logger.info("check %s of mailbox %s: ok", data.check_id, data.mailbox_id)
    return None


async def _grant_of(data: MailboxCheckRequestedData, deps: BrokerDeps) -> StoredGrant:
    """The mailbox's grant: under the link it is linked under, else (a reconnect handed it to
    the mailbox's first link, or kept it under the reconnect's) the one naming the mailbox."""
    grant = await deps.store.get_grant(data.link_id)
    if grant is None or grant.mailbox_id not in (None, data.mailbox_id):
        grant = await deps.store.grant_of_mailbox(data.mailbox_id)
    if grant is None:
        raise CheckFailed(
            Failure.of(
                FailureCode.RECONNECT_REQUIRED,
                "no tokens are kept for this mailbox; it must be reconnected",
            )
        )
    return grant


async def _fresh(grant: StoredGrant, deps: BrokerDeps) -> StoredGrant:
    """The grant with an access token valid beyond the refresh margin: refreshed first when
    due, through the token upkeep (its lease: one refresher at a time, whichever broker); while
    another refresher holds the lease, read again until it is done or `check_refresh_wait`."""
    loop = asyncio.get_running_loop()
    give_up_at = loop.time() + deps.check_refresh_wait
    while True:
        now = deps.clock()
        if grant.status is GrantStatus.RECONNECT_REQUIRED:
            raise CheckFailed(_refused_for_good())
        if grant.expires_at >= now + deps.refresh_margin:
            return grant
        if grant.status is not GrantStatus.ACTIVE:
            # Verified, the broker not yet told it is linked: the upkeep may not refresh it.
            if grant.expires_at > now:
                return grant
            raise CheckFailed(
                Failure.of(FailureCode.INTERNAL_ERROR, "the tokens are not yet kept fresh")
            )
        if grant.retry_at is not None and grant.retry_at > now:
            raise CheckFailed(_refresh_trouble(grant, now))  # the upkeep's back-off holds
        if grant.provider_key not in deps.clients:
            # Not loaded (discovery failed, no credentials): the operators' to mend.
            detail = (
                f"the provider {grant.provider_key} is not loaded; its tokens are not refreshed"
            )
            raise CheckFailed(Failure.of(FailureCode.DEPLOYMENT_MISCONFIGURED, detail))
        result = await refresh_grant(grant, deps)
        if result is RefreshResult.RECONNECT_REQUIRED:
            # The upkeep published MailboxReconnectRequired: not repeated here.
            raise CheckFailed(_refused_for_good())
        current = await deps.store.get_grant(grant.link_id)
        if current is None:
            raise CheckFailed(
                Failure.of(FailureCode.RECONNECT_REQUIRED, "the mailbox's tokens were deleted")
            )
        if result is RefreshResult.RETRYING:
            raise CheckFailed(_refresh_trouble(current, deps.clock()))
        if result is RefreshResult.SKIPPED and current.expires_at < deps.clock() + (
            deps.refresh_margin
        ):
            # Another refresher holds the lease: wait for its outcome.
            if loop.time() >= give_up_at:
                raise CheckFailed(
                    Failure.of(
                        FailureCode.TIMEOUT, "the tokens were still being refreshed elsewhere"
                    )
                )
            await asyncio.sleep(_LEASE_POLL_SECONDS)
        grant = current


def _refused_for_good() -> Failure:
    return Failure.of(
        FailureCode.RECONNECT_REQUIRED, "the provider refused to refresh the tokens for good"
    )


def _refresh_trouble(grant: StoredGrant, now: datetime) -> Failure:
    """A refresh that failed by no fault of the user, in a code that never asks the user to
    reconnect."""
    error = grant.last_refresh_error or "unreachable"
    if not _OAUTH_ERROR.fullmatch(error):
        error = "an undocumented error"  # the provider's text is never passed on
    when = f"; retried at {grant.retry_at.isoformat()}" if grant.retry_at is not None else ""
    if error in _OUR_APP_ERRORS:
        detail = f"the provider refused our app's refresh ({error}){when}"
        return Failure.of(FailureCode.DEPLOYMENT_MISCONFIGURED, detail)
    if error == "unreachable":
        return Failure.of(FailureCode.PROVIDER_ERROR, f"the provider did not answer{when}")
    return Failure.of(FailureCode.PROVIDER_ERROR, f"the provider's refresh failed ({error}){when}")


def _mechanism(grant: StoredGrant, deps: BrokerDeps) -> SaslMechanism:
    """The SASL mechanism the grant's provider takes tokens with (as at its sign-in)."""
    configured = (deps.mail_servers or {}).get(grant.provider_key)
    return SaslMechanism.XOAUTH2 if configured is None else configured.mechanism
