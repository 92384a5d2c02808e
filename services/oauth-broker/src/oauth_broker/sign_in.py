"""A link's sign-in: a session per OAuth link request, the URL offered once the registry
reserved the link, and the callback that exchanges the code and checks who signed in, the
scopes, lasting access and the mailbox itself before announcing the verification."""

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from mailbox_link_contract.events import (
    AuthMethod,
    Authority,
    AuthorizationRequired,
    AuthorizationRequiredData,
    Failure,
    LinkRequested,
    LinkReserved,
    MailboxOwner,
    MailboxVerified,
    MailboxVerifiedData,
    ProviderType,
    VerificationFailed,
    VerificationFailedData,
)
from mailbox_link_contract.failures import FailureCode
from mailbox_link_contract.values import EncryptedSecret
from mailbox_link_shared import metrics
from mailbox_link_shared.mail_probes import ProbeFailed
from mailbox_link_shared.metrics import provider_label
from mailbox_link_shared.tracing import (
    LINK_ID,
    continued_span,
    current_trace_headers,
    set_attributes,
)
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
    failure_for_sign_in_error,
)
from oauth_broker.domain.sessions import (
    AuthorizationSession,
    CallbackRefusal,
    LinkToAuthorize,
    PendingConfirmation,
    SessionSecrets,
    SignInStart,
    binding_cookie_name,
    new_secret,
    refuse_callback,
    refuse_issuer,
    same_secret,
    state_digest,
)
from oauth_broker.ports import BrokerDeps, MailServers, OAuthProviderClient
from oauth_broker.reconnects import require_the_account_linked_before

logger = logging.getLogger(__name__)
# Reservation markers of password links, which the broker sees but never serves.
_MARKER_LIFETIME = timedelta(hours=1)
# A verified grant the registry neither linked nor rejected by then lost a race with the
# reservation's expiry (the rejection was handled before the grant was stored): forget it.
# Generous, so a registry outage never costs a mailbox its tokens.
_UNANSWERED_GRANT_LIFETIME = timedelta(days=1)

# An XOAUTH2 login refused with a token the provider has just issued means the protocol is off.
_LOGIN_REFUSALS = {
    FailureCode.IMAP_AUTH_FAILED: FailureCode.IMAP_DISABLED,
    FailureCode.SMTP_AUTH_FAILED: FailureCode.SMTP_DISABLED,
}


async def when_link_requested_open_session(event: LinkRequested, deps: BrokerDeps) -> None:
    """Opens a sign-in session for an OAuth link request, and offers it if already reserved."""
    data = event.data
    if data.auth is not AuthMethod.OAUTH:
        return  # a password link: the IMAP verifier's
    link = LinkToAuthorize.of(event)
    if link.provider_key not in deps.clients:
        await deps.publisher.publish(_failed(link, _not_available(link, deps)))
        return
    # The request's trace (this consumer span's): the callback and confirmation continue it.
    trace_context = tuple(current_trace_headers().items())
    session, fresh = AuthorizationSession.open(
        link, deps.clock(), deps.session_lifetime, trace_context
    )
    sealed = deps.secret_box.seal(fresh.to_json(), context=data.link_id)
    await deps.store.save_request(session, sealed)
    await _offer_if_reserved(data.link_id, deps)


def _not_available(link: LinkToAuthorize, deps: BrokerDeps) -> Failure:
    """Why a link's provider cannot sign anyone in here: not configured, or configured but not
    loaded (its discovery failed or was refused; the broker's log says why)."""
    key = link.provider_key
    if key in deps.unavailable:
        detail = f"sign-in with {key} could not be set up in this deployment (see its log)"
        return Failure.of(FailureCode.DEPLOYMENT_MISCONFIGURED, detail)
    detail = f"sign-in with {key} is not configured in this deployment"
    if link.provider is ProviderType.OIDC:
        # link-api offered it, so the two services' MBL_OIDC_PROVIDERS disagree.
        return Failure.of(FailureCode.DEPLOYMENT_MISCONFIGURED, detail)
    return Failure.of(FailureCode.PROVIDER_ERROR, detail)


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
    # The broker's start URL, not the provider's: no state leaves the broker (ADR 0014).
    url = f"{deps.start_url.rstrip('/')}/{fresh.start_token}"
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


@dataclass(frozen=True)
class StartOutcome:
    """Where a browser opening a start URL goes: the provider (with its binding cookie) or a
    refusal page."""

    redirect_url: str | None = None
    link_id: str | None = None
    binding: str | None = None
    usable_until: datetime | None = None
    refusal: CallbackRefusal | None = None


async def start_sign_in(start_token: str, deps: BrokerDeps) -> StartOutcome:
    """Opens a link's sign-in in the browser that came with its start URL, once: makes the
    state and the browser's binding secret (both stored only as digests) and returns the
    provider's authorization URL."""
    now = deps.clock()
    found = await deps.store.session_by_start(state_digest(start_token)) if start_token else None
    refusal = refuse_callback(found[0] if found else None, now)
    if refusal is CallbackRefusal.STATE_USED:
        refusal = CallbackRefusal.START_USED
    if refusal is not None or found is None:
        logger.info("sign-in start refused: %s", (refusal or CallbackRefusal.UNKNOWN_STATE).value)
        return StartOutcome(refusal=refusal or CallbackRefusal.UNKNOWN_STATE)
    session, sealed = found
    link = session.link
    state, binding = new_secret(), new_secret()
    start = SignInStart(link.link_id, state_digest(state), state_digest(binding), now)
    if not await deps.store.start_sign_in(start):
        logger.info("link %s: start URL opened again, refused", link.link_id)
        return StartOutcome(refusal=CallbackRefusal.START_USED)
    fresh = SessionSecrets.from_json(deps.secret_box.open(sealed, context=link.link_id))
    client = deps.clients[link.provider_key]
    url = client.authorize_url(fresh.started(state), login_hint=link.address)
    logger.info("link %s: sign-in started", link.link_id)
    return StartOutcome(url, link.link_id, binding, session.usable_until)


class CallbackResult(StrEnum):
    """How a callback ended, for the page the browser sees."""

    VERIFIED = "verified"
    FAILED = "failed"
    REFUSED = "refused"


@dataclass(frozen=True)
class CallbackOutcome:
    """What the callback page says: the result, the failure or refusal, and the link; for a
    verified sign-in, the one-time code the product confirms it with."""

    result: CallbackResult
    link_id: str | None = None
    address: str | None = None
    failure: Failure | None = None
    refusal: CallbackRefusal | None = None
    owner: MailboxOwner | None = None
    confirmation_code: str | None = None


async def complete_sign_in(
    state: str,
    code: str | None,
    error: str | None,
    error_description: str,
    deps: BrokerDeps,
    cookies: Mapping[str, str] | None = None,
    iss: str | None = None,
) -> CallbackOutcome:
    """Handles the browser's return from the provider: verifies the mailbox, or says why not.

    A forged, replayed or expired state, one of a link the registry ended, a callback in a
    browser that did not start the sign-in (no matching binding cookie), or one whose RFC 9207
    `iss` is not the provider's changes nothing. A verified sign-in is announced only once the
    product confirms it (confirm_sign_in).
    """
    claimed = await _claim_session(state, cookies or {}, iss, deps)
    if isinstance(claimed, CallbackRefusal):
        logger.info("callback refused: %s", claimed.value)
        return CallbackOutcome(CallbackResult.REFUSED, refusal=claimed)
    session, sealed = claimed
    # In the link's trace (the browser's request has a trace of its own, linked to it).
    with continued_span("oauth callback", dict(session.trace_context), _span_attributes(session)):
        return await _complete_claimed(session, sealed, code, error, error_description, deps)


def _span_attributes(session: AuthorizationSession) -> dict[str, str]:
    # The link id and the kind of provider only: the state, the code, tokens and the
    # address never go into a span.
    return {LINK_ID: session.link.link_id, "oauth.provider": provider_label(session.link.provider)}


async def _complete_claimed(
    session: AuthorizationSession,
    sealed: EncryptedSecret,
    code: str | None,
    error: str | None,
    error_description: str,
    deps: BrokerDeps,
) -> CallbackOutcome:
    link = session.link
    fresh = SessionSecrets.from_json(deps.secret_box.open(sealed, context=link.link_id))
    obtained = _Obtained()
    started = time.perf_counter()
    try:
        grant, servers, subject = await _verify_sign_in(
            link, fresh, code, error, error_description, deps, obtained
        )
    except AuthorizationFailed as failed:
        failure = Failure.of(failed.code, failed.detail)
        logger.info("link %s sign-in failed: %s (%s)", link.link_id, failed.code, failed.detail)
    except Exception as exc:
        # A bug must still end the link (its session is used up); only the type is logged,
        # as library messages may quote what was sent.
        logger.error("link %s sign-in broke: %s", link.link_id, type(exc).__name__)
        failure = Failure.of(FailureCode.INTERNAL_ERROR, type(exc).__name__)
    else:
        metrics.oauth_sign_in(link.provider.value, None)
        metrics.verification_finished("oauth", None, time.perf_counter() - started)
        set_attributes(**{"oauth.result": "verified"})
        confirmation = await _await_confirmation(session, grant, servers, subject, deps)
        return CallbackOutcome(
            CallbackResult.VERIFIED, link.link_id, link.address, owner=link.owner,
            confirmation_code=confirmation,
        )  # fmt: skip
    metrics.oauth_sign_in(link.provider.value, failure.code)
    metrics.verification_finished("oauth", failure.code, time.perf_counter() - started)
    set_attributes(**{"oauth.result": metrics.result_of(failure.code)})
    await deps.publisher.publish(_failed(link, failure))
    await _revoke_obtained(link, obtained, deps)
    return CallbackOutcome(
        CallbackResult.FAILED, link.link_id, link.address, failure, owner=link.owner
    )


@dataclass
class _Obtained:
    """What a sign-in got from the provider before it failed: the tokens to revoke, and who
    signed in (when known)."""

    tokens: TokenResponse | None = None
    mailbox: SignedInMailbox | None = None


async def _revoke_obtained(link: LinkToAuthorize, obtained: _Obtained, deps: BrokerDeps) -> None:
    """Revokes the tokens a failed sign-in obtained, where the provider offers revocation, so
    no grant to our app stays behind at the provider. A revocation failure is only logged:
    the sign-in failed for its own reason, which is what the user is told."""
    tokens = obtained.tokens
    if tokens is None:
        return  # nothing was exchanged
    token, hint = (
        (tokens.refresh_token, "refresh_token")
        if tokens.refresh_token
        else (tokens.access_token, "access_token")
    )
    # Google revokes the user's whole grant to our app, whichever token is sent: never when
    # this broker keeps tokens of that account (a mailbox linked, or being reconnected).
    signed_in = (link.address, *(obtained.mailbox.addresses if obtained.mailbox else ()))
    try:
        if await deps.store.holds_grant_for(link.provider, signed_in):
            logger.info("link %s: tokens of a failed sign-in kept, a linked grant shares them",
                        link.link_id)  # fmt: skip
            return
        revoked = await deps.clients[link.provider_key].revoke(token, hint)
    except Exception as exc:
        # The provider's message could quote what was sent: only the kind of failure.
        logger.warning("link %s: revoking the failed sign-in's tokens failed (%s)",
                       link.link_id, type(exc).__name__)  # fmt: skip
        return
    logger.info("link %s: failed sign-in's tokens %s", link.link_id,
                "revoked" if revoked else "not revocable at this provider")  # fmt: skip


async def _claim_session(
    state: str, cookies: Mapping[str, str], iss: str | None, deps: BrokerDeps
) -> tuple[AuthorizationSession, EncryptedSecret] | CallbackRefusal:
    """Finds the state's session and uses it up, or says why the callback must be refused."""
    now = deps.clock()
    start = await deps.store.start_by_state(state_digest(state)) if state else None
    if start is None:
        return CallbackRefusal.UNKNOWN_STATE
    # Before anything else: a browser that did not start the sign-in changes nothing.
    if not same_secret(cookies.get(binding_cookie_name(start.link_id)), start.binding_digest):
        return CallbackRefusal.NOT_BOUND
    found = await deps.store.get_session(start.link_id)
    refusal = refuse_callback(found[0] if found else None, now)
    if refusal is not None or found is None:
        return refusal or CallbackRefusal.UNKNOWN_STATE
    # Before the session is used up: a mixed-up or forged answer must not spend it.
    client = deps.clients.get(found[0].link.provider_key)
    if client is not None:
        endpoints = client.app.endpoints
        refusal = refuse_issuer(iss, endpoints.issuer, endpoints.iss_parameter_supported)
        if refusal is not None:
            shown = None if iss is None else iss[:200]
            logger.warning("link %s: callback with iss %r refused", start.link_id, shown)
            return refusal
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
    obtained: _Obtained,
) -> tuple[TokenGrant, MailServers, str | None]:
    """Exchanges the code and checks every promise the link needs; raises AuthorizationFailed.
    What it gets from the provider goes into `obtained` at once, for revocation on failure.
    Returns the grant, the servers it was checked on, and the provider's stable id of the
    account that signed in (the id token's `sub`, else userinfo's; None where neither came)."""
    if error:
        detail = f"{error}: {error_description}" if error_description else error
        raise AuthorizationFailed(failure_for_callback_error(error), detail)
    if not code:
        raise AuthorizationFailed(FailureCode.PROVIDER_ERROR, "the provider sent no code")
    client = deps.clients[link.provider_key]
    now = deps.clock()
    try:
        tokens = obtained.tokens = await client.exchange_code(code, fresh.code_verifier, now)
        id_subject = await _checked_id_token(tokens, fresh.nonce, client)
        _require_lasting_mail_access(tokens, client.app)
        mailbox = obtained.mailbox = await client.signed_in_mailbox(tokens, now)
    except (ProviderRefused, ProviderUnreachable) as exc:
        raise _provider_failure(link, exc) from None
    subject = _same_subject(id_subject, mailbox.subject)
    if not matches_any(link.address, mailbox.addresses):
        signed_in = ", ".join(mailbox.addresses) or "an account without a verified address"
        raise AuthorizationFailed(FailureCode.ACCOUNT_MISMATCH, f"signed in as {signed_in}")
    await require_the_account_linked_before(link, mailbox, subject, deps)
    refresh_token = mailbox.rotated_refresh_token or tokens.refresh_token or ""
    grant = TokenGrant(
        tokens.access_token, refresh_token, tokens.expires_at, tokens.scopes, subject
    )
    servers = _servers_for(link, deps)
    await _check_mailbox(servers, grant.access_token, deps)
    return grant, servers, subject


async def _checked_id_token(
    tokens: TokenResponse, nonce: str, client: OAuthProviderClient
) -> str | None:
    """Checks the id token (signature, issuer, audience, expiry, our nonce) and returns its
    `sub`. One must come whenever `openid` was asked for: without it nothing binds the answer
    to this sign-in's nonce (RFC 9700 2.1.1)."""
    if not tokens.id_token:
        if client.app.endpoints.needs_id_token:
            raise AuthorizationFailed(
                FailureCode.PROVIDER_ERROR,
                "the provider sent no id token, which the sign-in requires (openid was asked)",
            )
        return None
    claims = await client.check_id_token(tokens.id_token, nonce)
    sub = claims.get("sub")
    return str(sub) if sub is not None else None


def _same_subject(id_subject: str | None, userinfo_subject: str | None) -> str | None:
    """Returns the signed-in account's stable id; refuses userinfo about another account than
    the id token's (OIDC Core 5.3.2: its values must then not be used)."""
    if id_subject is not None and userinfo_subject is not None and id_subject != userinfo_subject:
        raise AuthorizationFailed(
            FailureCode.PROVIDER_ERROR,
            "userinfo describes another account (sub) than the id token: not used",
        )
    return id_subject if id_subject is not None else userinfo_subject or None


def _provider_failure(
    link: LinkToAuthorize, exc: ProviderRefused | ProviderUnreachable
) -> AuthorizationFailed:
    code = failure_for_sign_in_error(exc)
    if code is FailureCode.DEPLOYMENT_MISCONFIGURED:
        # Every sign-in at this provider fails until the operators mend our app's settings.
        logger.error(
            "link %s: %s refused our app's credentials (%s): check its client id and secret "
            "(MBL_OAUTH_<PROVIDER>__CLIENT_ID/__CLIENT_SECRET) and the app registration",
            link.link_id, link.provider.value, exc,
        )  # fmt: skip
    return AuthorizationFailed(code, str(exc))


def _require_lasting_mail_access(tokens: TokenResponse, app: OAuthApp) -> None:
    missing = missing_scopes(tokens.scopes, app.endpoints.mail_scopes)
    if missing:
        raise AuthorizationFailed(FailureCode.SCOPE_MISSING, f"not granted: {' '.join(missing)}")
    if not tokens.refresh_token:
        raise AuthorizationFailed(FailureCode.NO_REFRESH_TOKEN, "the token answer had none")


async def _check_mailbox(servers: MailServers, access_token: str, deps: BrokerDeps) -> None:
    try:
        await deps.check_mailbox(servers.imap, servers.smtp, access_token, servers.mechanism)
    except ProbeFailed as failed:
        code = _LOGIN_REFUSALS.get(failed.code, failed.code)
        raise AuthorizationFailed(code, failed.detail) from None


def _servers_for(link: LinkToAuthorize, deps: BrokerDeps) -> MailServers:
    configured = (deps.mail_servers or {}).get(link.provider_key)
    if configured is None:
        return MailServers(link.imap, link.smtp)
    return MailServers(
        configured.imap.model_copy(update={"username": link.address}),
        configured.smtp.model_copy(update={"username": link.address}),
        configured.mechanism,
    )


async def _await_confirmation(
    session: AuthorizationSession,
    grant: TokenGrant,
    servers: MailServers,
    subject: str | None,
    deps: BrokerDeps,
) -> str:
    """Keeps a verified sign-in (tokens sealed) until the product confirms it; returns the
    one-time code, stored only as a digest."""
    link = session.link
    now = deps.clock()
    sealed = deps.secret_box.seal(grant.to_json(), context=link.address)
    stored = StoredGrant(
        link.link_id, link.owner, link.address, link.provider, GrantStatus.VERIFIED,
        grant.expires_at, sealed, verified_at=now, oidc_provider=link.oidc_provider,
        subject=subject,
    )  # fmt: skip
    await deps.store.save_grant(stored)
    code = new_secret()
    expires_at = min(now + deps.confirm_lifetime, session.usable_until)
    pending = PendingConfirmation(
        link.link_id, state_digest(code), expires_at, servers.imap, servers.smtp
    )
    await deps.store.save_confirmation(pending)
    logger.info("link %s verified by sign-in, awaiting the product's confirmation", link.link_id)
    return code


class ConfirmRefusal(StrEnum):
    """Why a confirmation changes nothing."""

    UNKNOWN_CODE = "unknown_code"  # never issued, or the link ended (its tokens are gone)
    CODE_EXPIRED = "code_expired"  # too late: the confirm window or the reservation lapsed
    CODE_USED = "code_used"  # a code confirms once
    OTHER_USER = "other_user"  # the code belongs to another account's or user's link


async def confirm_sign_in(
    owner: MailboxOwner, code: str, deps: BrokerDeps
) -> ConfirmRefusal | None:
    """Announces a verified sign-in (MailboxVerified) when the product confirms its one-time
    code for the user who requested the link; otherwise returns why not, changing nothing (a
    wrong user's attempt does not use the code up)."""
    now = deps.clock()
    pending = await deps.store.confirmation_by_code(state_digest(code)) if code else None
    if pending is None:
        return ConfirmRefusal.UNKNOWN_CODE
    found = await deps.store.get_session(pending.link_id)
    grant = await deps.store.get_grant(pending.link_id)
    if found is None or grant is None:
        return ConfirmRefusal.UNKNOWN_CODE  # the registry ended the link (its tokens are gone)
    with continued_span("oauth confirm", dict(found[0].trace_context), _span_attributes(found[0])):
        refusal = await _confirm_found(owner, pending, found[0], grant, now, deps)
        set_attributes(**{"oauth.result": refusal.value if refusal else "confirmed"})
        return refusal


async def _confirm_found(
    owner: MailboxOwner,
    pending: PendingConfirmation,
    session: AuthorizationSession,
    grant: StoredGrant,
    now: datetime,
    deps: BrokerDeps,
) -> "ConfirmRefusal | None":
    link = session.link
    # The owner first: another user learns only that the code is not theirs.
    if link.owner != owner:
        logger.warning("link %s: confirmation by another user refused", link.link_id)
        return ConfirmRefusal.OTHER_USER
    if grant.status is not GrantStatus.VERIFIED:
        return ConfirmRefusal.CODE_USED  # already confirmed and linked
    if pending.expires_at <= now or (session.reserved_until or now) <= now:
        return ConfirmRefusal.CODE_EXPIRED
    if not await deps.store.mark_confirmed(link.link_id, now):
        return ConfirmRefusal.CODE_USED
    data = MailboxVerifiedData(
        link_id=link.link_id,
        owner=link.owner,
        address=link.address,
        provider=link.provider,
        oidc_provider=link.oidc_provider,
        auth=AuthMethod.OAUTH,
        imap=pending.imap,
        smtp=pending.smtp,
        credentials=grant.sealed,
        # The provider said who signed in, and it is the requested mailbox.
        authority=Authority.PROVIDER,
    )
    try:
        await deps.publisher.publish(
            MailboxVerified(correlation_id=link.link_id, producer=SERVICE_NAME, data=data)
        )
    except Exception:
        await deps.store.unmark_confirmed(link.link_id)  # the product may retry
        raise
    logger.info("link %s confirmed by its requester", link.link_id)
    return None


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
