"""One function per thing the broker does: open a sign-in, offer it, complete it, keep the tokens
fresh, and give them up when the link ends.

Every handler is safe to repeat: sessions and grants change only by conditional updates, and a
repeated event re-publishes at most what consumers already deduplicate.
"""

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from mailbox_link_contract.events import (
    AuthMethod,
    AuthorizationRequired,
    AuthorizationRequiredData,
    Failure,
    LinkRejected,
    LinkRequested,
    LinkReserved,
    MailboxLinked,
    MailboxReconnectRequired,
    MailboxReconnectRequiredData,
    MailboxUnlinked,
    MailboxVerified,
    MailboxVerifiedData,
    ProviderType,
    ServerSettings,
    VerificationFailed,
    VerificationFailedData,
    utc_now,
)
from mailbox_link_contract.failures import FailureCode
from mailbox_link_contract.values import EncryptedSecret
from mailbox_link_shared.crypto import SecretBox
from mailbox_link_shared.mail_probes import ProbeFailed
from mailbox_link_shared.publishing import EventPublisher
from mailbox_link_shared.routing import EventHandlers
from oauth_broker.adapters.broker_store import BrokerStore
from oauth_broker.adapters.oauth_client import OAuthApp, SignedInMailbox, TokenResponse
from oauth_broker.config import SERVICE_NAME
from oauth_broker.domain.grants import (
    GrantStatus,
    StoredGrant,
    TokenGrant,
    missing_scopes,
)
from oauth_broker.domain.mailbox_identity import matches_any
from oauth_broker.domain.outcomes import (
    AuthorizationFailed,
    ProviderRefused,
    ProviderUnreachable,
    failure_for_callback_error,
)
from oauth_broker.domain.sessions import (
    AuthorizationSession,
    CallbackRefusal,
    LinkToAuthorize,
    SessionSecrets,
    refuse_callback,
    state_digest,
)

logger = logging.getLogger(__name__)

# An XOAUTH2 login refused with a token the provider has just issued means the protocol is off.
_LOGIN_REFUSALS = {
    FailureCode.IMAP_AUTH_FAILED: FailureCode.IMAP_DISABLED,
    FailureCode.SMTP_AUTH_FAILED: FailureCode.SMTP_DISABLED,
}
# Reservation markers of password links, which the broker sees but never serves.
_MARKER_LIFETIME = timedelta(hours=1)
# A verified grant the registry neither linked nor rejected by then lost a race with the
# reservation's expiry (the rejection was handled before the grant was stored): forget it.
# Generous, so a registry outage never costs a mailbox its tokens.
_UNANSWERED_GRANT_LIFETIME = timedelta(days=1)
# How long one broker may take to refresh a grant before another may try; a failed refresh is
# retried when it lapses, which spaces out retries against a provider that is down.
_REFRESH_LEASE = timedelta(minutes=1)


class OAuthProviderClient(Protocol):
    """One provider's OAuth client (adapters/oauth_client.py; faked in unit tests)."""

    app: OAuthApp

    def authorize_url(self, secrets: SessionSecrets, login_hint: str) -> str: ...
    async def exchange_code(
        self, code: str, code_verifier: str, now: datetime
    ) -> TokenResponse: ...
    async def refresh(
        self, refresh_token: str, now: datetime, scopes: tuple[str, ...] = ()
    ) -> TokenResponse: ...
    async def revoke(self, token: str) -> bool: ...
    async def check_id_token(self, id_token: str, nonce: str) -> dict[str, Any]: ...
    async def signed_in_mailbox(self, tokens: TokenResponse, now: datetime) -> SignedInMailbox: ...
    async def aclose(self) -> None: ...


CheckMailbox = Callable[[ServerSettings, ServerSettings, str], Awaitable[None]]


@dataclass(frozen=True)
class MailServers:
    """Where to check a provider's mailboxes with XOAUTH2, instead of the request's servers."""

    imap: ServerSettings
    smtp: ServerSettings


@dataclass(frozen=True)
class BrokerDeps:
    """What the handlers work with; wired in bootstrap, faked in unit tests."""

    store: BrokerStore
    publisher: EventPublisher
    secret_box: SecretBox
    clients: Mapping[ProviderType, OAuthProviderClient]
    check_mailbox: CheckMailbox
    session_lifetime: timedelta = timedelta(minutes=10)
    refresh_margin: timedelta = timedelta(minutes=5)
    mail_servers: Mapping[ProviderType, MailServers] | None = None
    clock: Callable[[], datetime] = utc_now


# --- a link's sign-in -------------------------------------------------------------------------


async def when_link_requested_open_session(event: LinkRequested, deps: BrokerDeps) -> None:
    """Opens a sign-in session for an OAuth link request, and offers it if already reserved."""
    data = event.data
    if data.auth is not AuthMethod.OAUTH:
        return  # a password link: the IMAP verifier's
    if data.provider not in deps.clients:
        failure = Failure.of(
            FailureCode.PROVIDER_ERROR,
            f"sign-in with {data.provider.value} is not configured in this deployment",
        )
        await deps.publisher.publish(_failed(LinkToAuthorize.of(event), failure))
        return
    session, fresh = AuthorizationSession.open(
        LinkToAuthorize.of(event), deps.clock(), deps.session_lifetime
    )
    sealed = deps.secret_box.seal(fresh.to_json(), context=data.link_id)
    await deps.store.save_request(session, sealed)
    await _offer_if_reserved(data.link_id, deps)


async def when_link_reserved_offer_sign_in(event: LinkReserved, deps: BrokerDeps) -> None:
    """Publishes the sign-in URL now that the registry holds the address and a plan slot."""
    if event.data.provider is ProviderType.IMAP:
        return  # a password link's reservation: nothing to remember
    await deps.store.mark_reserved(event.data.link_id, event.data.expires_at, deps.clock())
    await _offer_if_reserved(event.data.link_id, deps)


async def _offer_if_reserved(link_id: str, deps: BrokerDeps) -> None:
    # Both the request and the reservation call this, in whichever order they come: the URL
    # goes out once both are in (twice at worst, and link-api ignores the repeat).
    found = await deps.store.get_session(link_id)
    if found is None:
        return
    session, sealed = found
    if not session.may_be_offered(deps.clock()):
        return
    link = session.link
    fresh = SessionSecrets.from_json(deps.secret_box.open(sealed, context=link_id))
    url = deps.clients[link.provider].authorize_url(fresh, login_hint=link.address)
    data = AuthorizationRequiredData(
        link_id=link_id,
        owner=link.owner,
        address=link.address,
        provider=link.provider,
        authorize_url=url,
        expires_at=session.usable_until,
    )
    await deps.publisher.publish(
        AuthorizationRequired(correlation_id=link_id, producer=SERVICE_NAME, data=data)
    )
    logger.info("link %s: sign-in offered until %s", link_id, session.usable_until.isoformat())


class CallbackResult(StrEnum):
    """How a callback ended, for the page the browser sees."""

    VERIFIED = "verified"
    FAILED = "failed"
    REFUSED = "refused"


@dataclass(frozen=True)
class CallbackOutcome:
    """What the callback page says: the result, the failure or refusal, and the link."""

    result: CallbackResult
    link_id: str | None = None
    address: str | None = None
    failure: Failure | None = None
    refusal: CallbackRefusal | None = None


async def complete_sign_in(
    state: str, code: str | None, error: str | None, error_description: str, deps: BrokerDeps
) -> CallbackOutcome:
    """Handles the browser's return from the provider: verifies the mailbox, or says why not.

    A forged, replayed or expired state, or one of a link the registry ended, changes nothing.
    """
    claimed = await _claim_session(state, deps)
    if isinstance(claimed, CallbackRefusal):
        logger.info("callback refused: %s", claimed.value)
        return CallbackOutcome(CallbackResult.REFUSED, refusal=claimed)
    session, sealed = claimed
    link = session.link
    fresh = SessionSecrets.from_json(deps.secret_box.open(sealed, context=link.link_id))
    try:
        grant, servers = await _verify_sign_in(link, fresh, code, error, error_description, deps)
    except AuthorizationFailed as failed:
        failure = Failure.of(failed.code, failed.detail)
        logger.info("link %s sign-in failed: %s (%s)", link.link_id, failed.code, failed.detail)
    except Exception as exc:
        # A bug must still end the link (its session is used up); only the type is logged,
        # as library messages may quote what was sent.
        logger.error("link %s sign-in broke: %s", link.link_id, type(exc).__name__)
        failure = Failure.of(FailureCode.INTERNAL_ERROR, type(exc).__name__)
    else:
        await _announce_verified(link, grant, servers, deps)
        return CallbackOutcome(CallbackResult.VERIFIED, link.link_id, link.address)
    await deps.publisher.publish(_failed(link, failure))
    return CallbackOutcome(CallbackResult.FAILED, link.link_id, link.address, failure)


async def _claim_session(
    state: str, deps: BrokerDeps
) -> tuple[AuthorizationSession, EncryptedSecret] | CallbackRefusal:
    """Finds the state's session and uses it up, or says why the callback must be refused."""
    now = deps.clock()
    found = await deps.store.session_by_state(state_digest(state)) if state else None
    refusal = refuse_callback(found[0] if found else None, now)
    if refusal is not None or found is None:
        return refusal or CallbackRefusal.UNKNOWN_STATE
    if not await deps.store.claim_session(found[0].link.link_id, now):
        return CallbackRefusal.STATE_USED  # a concurrent replay won the claim
    return found


async def _verify_sign_in(
    link: LinkToAuthorize,
    fresh: SessionSecrets,
    code: str | None,
    error: str | None,
    error_description: str,
    deps: BrokerDeps,
) -> tuple[TokenGrant, MailServers]:
    """Exchanges the code and checks every promise the link needs; raises AuthorizationFailed."""
    if error:
        detail = f"{error}: {error_description}" if error_description else error
        raise AuthorizationFailed(failure_for_callback_error(error), detail)
    if not code:
        raise AuthorizationFailed(FailureCode.PROVIDER_ERROR, "the provider sent no code")
    client = deps.clients[link.provider]
    now = deps.clock()
    try:
        tokens = await client.exchange_code(code, fresh.code_verifier, now)
        if tokens.id_token:
            await client.check_id_token(tokens.id_token, fresh.nonce)
        _require_lasting_mail_access(tokens, client.app)
        mailbox = await client.signed_in_mailbox(tokens, now)
    except (ProviderRefused, ProviderUnreachable) as exc:
        raise AuthorizationFailed(FailureCode.PROVIDER_ERROR, str(exc)) from None
    if not matches_any(link.address, mailbox.addresses):
        signed_in = ", ".join(mailbox.addresses) or "an account without a verified address"
        raise AuthorizationFailed(FailureCode.ACCOUNT_MISMATCH, f"signed in as {signed_in}")
    refresh_token = mailbox.rotated_refresh_token or tokens.refresh_token or ""
    grant = TokenGrant(tokens.access_token, refresh_token, tokens.expires_at, tokens.scopes)
    servers = _servers_for(link, deps)
    await _check_mailbox(servers, grant.access_token, deps)
    return grant, servers


def _require_lasting_mail_access(tokens: TokenResponse, app: OAuthApp) -> None:
    missing = missing_scopes(tokens.scopes, app.endpoints.mail_scopes)
    if missing:
        raise AuthorizationFailed(FailureCode.SCOPE_MISSING, f"not granted: {' '.join(missing)}")
    if not tokens.refresh_token:
        raise AuthorizationFailed(FailureCode.NO_REFRESH_TOKEN, "the token answer had none")


async def _check_mailbox(servers: MailServers, access_token: str, deps: BrokerDeps) -> None:
    try:
        await deps.check_mailbox(servers.imap, servers.smtp, access_token)
    except ProbeFailed as failed:
        code = _LOGIN_REFUSALS.get(failed.code, failed.code)
        raise AuthorizationFailed(code, failed.detail) from None


def _servers_for(link: LinkToAuthorize, deps: BrokerDeps) -> MailServers:
    configured = (deps.mail_servers or {}).get(link.provider)
    if configured is None:
        return MailServers(link.imap, link.smtp)
    return MailServers(
        configured.imap.model_copy(update={"username": link.address}),
        configured.smtp.model_copy(update={"username": link.address}),
    )


async def _announce_verified(
    link: LinkToAuthorize, grant: TokenGrant, servers: MailServers, deps: BrokerDeps
) -> None:
    # The grant is stored before the event goes out, so MailboxLinked always finds it.
    sealed = deps.secret_box.seal(grant.to_json(), context=link.address)
    stored = StoredGrant(
        link.link_id, link.owner, link.address, link.provider, GrantStatus.VERIFIED,
        grant.expires_at, sealed, verified_at=deps.clock(),
    )  # fmt: skip
    await deps.store.save_grant(stored)
    data = MailboxVerifiedData(
        link_id=link.link_id,
        owner=link.owner,
        address=link.address,
        provider=link.provider,
        auth=AuthMethod.OAUTH,
        imap=servers.imap,
        smtp=servers.smtp,
        credentials=sealed,
    )
    await deps.publisher.publish(
        MailboxVerified(correlation_id=link.link_id, producer=SERVICE_NAME, data=data)
    )
    logger.info("link %s verified by sign-in", link.link_id)


# --- the registry's answers -------------------------------------------------------------------


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
    client = deps.clients.get(grant.provider)
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


# --- housekeeping -----------------------------------------------------------------------------


async def refresh_due_grants(deps: BrokerDeps) -> int:
    """Refreshes every active grant whose access token expires within the margin."""
    due = await deps.store.grants_due(deps.clock() + deps.refresh_margin)
    for grant in due:
        try:
            await refresh_grant(grant, deps)
        except Exception as exc:
            # One grant's trouble (a retired sealing key, a bug) must not stall the others.
            logger.error("link %s: refresh broke: %s", grant.link_id, type(exc).__name__)
    return len(due)


async def refresh_grant(grant: StoredGrant, deps: BrokerDeps) -> None:
    """Renews one grant; a refusal for good marks the mailbox reconnect_required."""
    now = deps.clock()
    if not await deps.store.lease_refresh(grant.link_id, now, now + _REFRESH_LEASE):
        return  # another broker is refreshing it
    # Read again under the lease: another broker may have refreshed it since `grant` was read,
    # and an old (rotated) refresh token would now be refused as if access were revoked.
    current = await deps.store.get_grant(grant.link_id)
    due_by = now + deps.refresh_margin
    if current is None or current.status is not GrantStatus.ACTIVE or current.expires_at >= due_by:
        return
    grant = current
    tokens = TokenGrant.from_json(deps.secret_box.open(grant.sealed, context=grant.address))
    try:
        fresh = await deps.clients[grant.provider].refresh(tokens.refresh_token, deps.clock())
    except ProviderRefused as refused:
        if refused.is_final:
            await _require_reconnect(grant, str(refused), deps)
        else:
            logger.warning("link %s: refresh refused (%s); retrying", grant.link_id, refused)
        return
    except ProviderUnreachable as exc:
        logger.warning("link %s: refresh failed (%s); retrying", grant.link_id, exc)
        return
    renewed = tokens.renewed(fresh.access_token, fresh.expires_at, fresh.refresh_token)
    sealed = deps.secret_box.seal(renewed.to_json(), context=grant.address)
    await deps.store.renew_grant(grant.link_id, sealed, renewed.expires_at)


async def _require_reconnect(grant: StoredGrant, detail: str, deps: BrokerDeps) -> None:
    # Published before the grant is marked: a crash in between repeats the event next round
    # (consumers deduplicate, the registry's flag is idempotent) instead of losing it.
    if grant.mailbox_id is None:
        return
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


async def end_expired_sessions(deps: BrokerDeps) -> int:
    """Ends sign-ins nobody finished in time; a reserved link fails with session_expired."""
    now = deps.clock()
    ended = 0
    for link_id in await deps.store.expired_sessions(now):
        found = await deps.store.get_session(link_id)
        if found is None or not await deps.store.end_session(link_id):
            continue
        ended += 1
        session = found[0]
        if session.reserved:
            detail = f"no sign-in completed by {session.expires_at.isoformat()}"
            failure = Failure.of(FailureCode.SESSION_EXPIRED, detail)
            await deps.publisher.publish(_failed(session.link, failure))
    await deps.store.delete_stray_markers(now - _MARKER_LIFETIME)
    forgotten = await deps.store.delete_unanswered_grants(now - _UNANSWERED_GRANT_LIFETIME)
    if forgotten:
        logger.warning("deleted %d verified grants the registry never answered", forgotten)
    return ended


def _failed(link: LinkToAuthorize, failure: Failure) -> VerificationFailed:
    data = VerificationFailedData(
        link_id=link.link_id,
        owner=link.owner,
        address=link.address,
        provider=link.provider,
        failure=failure,
    )
    return VerificationFailed(correlation_id=link.link_id, producer=SERVICE_NAME, data=data)


EVENT_HANDLERS: EventHandlers[BrokerDeps] = {
    LinkRequested: when_link_requested_open_session,
    LinkReserved: when_link_reserved_offer_sign_in,
    MailboxLinked: when_mailbox_linked_keep_fresh,
    LinkRejected: when_link_rejected_discard,
    MailboxUnlinked: when_mailbox_unlinked_revoke,
}
