"""The broker's handlers with hand-written fakes: sessions, callbacks, grants, refresh."""

import asyncio
import logging
from datetime import timedelta

import pytest
from pydantic import SecretStr

from broker_fakes import (
    ADDRESS,
    ALICE,
    BOX,
    JAR,
    FakeClock,
    FakeMailServers,
    FakeProvider,
    InMemoryBrokerStore,
    fake_deps,
    gmail_disabled,
    invalid_grant,
    offer_sign_in,
    rejected,
    requested,
    reserved,
    start_in_browser,
)
from mailbox_link_contract.events import (
    AuthMethod,
    Authority,
    AuthorizationRequired,
    Envelope,
    Failure,
    LinkRequested,
    LinkRequestedData,
    MailboxLinked,
    MailboxLinkedData,
    MailboxOwner,
    MailboxReconnectRequired,
    MailboxUnlinked,
    MailboxUnlinkedData,
    MailboxVerified,
    ProviderType,
    VerificationFailed,
)
from mailbox_link_contract.failures import FailureCode
from mailbox_link_shared.publishing import RecordingPublisher
from oauth_broker import handlers
from oauth_broker.adapters.oauth_client import OAuthApp
from oauth_broker.domain.grants import (
    FIRST_REFRESH_RETRY,
    MAX_REFRESH_RETRY,
    GrantStatus,
    TokenGrant,
)
from oauth_broker.domain.outcomes import ProviderRefused, ProviderUnreachable
from oauth_broker.domain.providers import GOOGLE
from oauth_broker.domain.sessions import CallbackRefusal
from oauth_broker.handlers import BrokerDeps, CallbackResult, ConfirmRefusal
from oauth_broker.token_upkeep import RefreshTally

APP = OAuthApp(ProviderType.GOOGLE, "client", SecretStr("secret"), "https://cb.test/", GOOGLE)


@pytest.fixture
def provider() -> FakeProvider:
    return FakeProvider(APP, signed_in_as=(ADDRESS,))


@pytest.fixture
def mail() -> FakeMailServers:
    return FakeMailServers()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def deps(provider: FakeProvider, mail: FakeMailServers, clock: FakeClock) -> BrokerDeps:
    return fake_deps(provider, check_mailbox=mail, clock=clock)


# --- offering the sign-in ---------------------------------------------------------------------


async def test_the_sign_in_url_is_published_only_after_the_reservation(deps: BrokerDeps) -> None:
    await handlers.when_link_requested_open_session(requested("l1"), deps)
    assert _events(deps) == []
    await handlers.when_link_reserved_offer_sign_in(reserved("l1"), deps)
    [offer] = _events(deps)
    assert isinstance(offer, AuthorizationRequired)
    assert offer.data.link_id == "l1"
    assert offer.data.authorize_url.startswith("http://127.0.0.1:8083/v1/oauth/start/")
    assert "state" not in offer.data.authorize_url  # the provider's state never leaves


async def test_a_reservation_arriving_first_is_remembered(deps: BrokerDeps) -> None:
    await handlers.when_link_reserved_offer_sign_in(reserved("l1"), deps)
    assert _events(deps) == []
    await handlers.when_link_requested_open_session(requested("l1"), deps)
    [offer] = _events(deps)
    assert isinstance(offer, AuthorizationRequired)


async def test_a_redelivered_request_keeps_the_first_sign_in(deps: BrokerDeps) -> None:
    await handlers.when_link_requested_open_session(requested("l1"), deps)
    await handlers.when_link_reserved_offer_sign_in(reserved("l1"), deps)
    await handlers.when_link_requested_open_session(requested("l1"), deps)
    urls = {e.data.authorize_url for e in _events(deps) if isinstance(e, AuthorizationRequired)}
    assert len(urls) == 1


async def test_password_links_are_not_the_brokers(deps: BrokerDeps) -> None:
    fields = requested("l1").data.model_dump()
    sealed = BOX.seal("{}", ADDRESS)
    fields.update(auth=AuthMethod.PASSWORD, provider=ProviderType.IMAP, credentials=sealed)
    event = LinkRequested(
        correlation_id="l1", producer="link-api", data=LinkRequestedData(**fields)
    )
    await handlers.when_link_requested_open_session(event, deps)
    await handlers.when_link_reserved_offer_sign_in(reserved("l1", ProviderType.IMAP), deps)
    assert _events(deps) == []
    assert isinstance(deps.store, InMemoryBrokerStore)
    assert deps.store.sessions == {}  # not even a note of the reservation


async def test_a_provider_without_credentials_fails_at_once(deps: BrokerDeps) -> None:
    data = requested("l1").data.model_copy(update={"provider": ProviderType.YAHOO})
    event = LinkRequested(correlation_id="l1", producer="link-api", data=data)
    await handlers.when_link_requested_open_session(event, deps)
    [failed] = _events(deps)
    assert isinstance(failed, VerificationFailed)
    assert failed.data.failure.code is FailureCode.PROVIDER_ERROR
    assert "not configured" in failed.data.failure.detail


# --- the callback -----------------------------------------------------------------------------


async def test_a_completed_sign_in_verifies_with_sealed_tokens(
    deps: BrokerDeps, provider: FakeProvider, mail: FakeMailServers
) -> None:
    state = await offer_sign_in(deps)
    outcome = await handlers.complete_sign_in(state, "code", None, "", deps, JAR)
    assert outcome.result is CallbackResult.VERIFIED
    assert outcome.confirmation_code is not None
    assert not isinstance(_events(deps)[-1], MailboxVerified)  # not before the confirmation
    assert None is await handlers.confirm_sign_in(ALICE, outcome.confirmation_code, deps)
    verified = _events(deps)[-1]
    assert isinstance(verified, MailboxVerified)
    assert verified.data.auth is AuthMethod.OAUTH
    assert verified.data.authority is Authority.PROVIDER
    tokens = TokenGrant.from_json(BOX.open(verified.data.verified_credentials, ADDRESS))
    assert (tokens.access_token, tokens.refresh_token) == ("access-1", "refresh-1")
    assert mail.logins == [("imap.gmail.com", ADDRESS, "access-1")]
    assert len(provider.nonce_seen) == 1


@pytest.mark.parametrize(
    ("error", "code"),
    [("access_denied", FailureCode.CONSENT_DENIED), ("server_error", FailureCode.PROVIDER_ERROR)],
)
async def test_an_error_from_the_provider_fails_the_link(
    deps: BrokerDeps, error: str, code: FailureCode
) -> None:
    state = await offer_sign_in(deps)
    outcome = await handlers.complete_sign_in(state, None, error, "", deps, JAR)
    assert outcome.result is CallbackResult.FAILED
    assert _failure(deps).code is code


async def test_another_account_is_an_account_mismatch(
    deps: BrokerDeps, provider: FakeProvider
) -> None:
    provider.signed_in_as = ("bob@gmail.com",)
    await handlers.complete_sign_in(await offer_sign_in(deps), "code", None, "", deps, JAR)
    failure = _failure(deps)
    assert failure.code is FailureCode.ACCOUNT_MISMATCH
    assert "bob@gmail.com" in failure.detail


async def test_gmail_spellings_of_the_same_mailbox_match(
    deps: BrokerDeps, provider: FakeProvider
) -> None:
    provider.signed_in_as = ("A.Lice+crm@googlemail.com",)
    outcome = await handlers.complete_sign_in(
        await offer_sign_in(deps), "code", None, "", deps, JAR
    )
    assert outcome.result is CallbackResult.VERIFIED


async def test_a_missing_mail_scope_or_refresh_token_fails_with_its_code(
    deps: BrokerDeps, provider: FakeProvider
) -> None:
    provider.scopes = frozenset({"openid", "email"})
    await handlers.complete_sign_in(await offer_sign_in(deps, "l1"), "code", None, "", deps, JAR)
    assert _failure(deps).code is FailureCode.SCOPE_MISSING
    provider.scopes, provider.refresh_token = frozenset(), None
    await handlers.complete_sign_in(await offer_sign_in(deps, "l2"), "code", None, "", deps, JAR)
    assert _failure(deps).code is FailureCode.NO_REFRESH_TOKEN


async def test_profile_and_mail_server_refusals_fail_with_their_code(
    deps: BrokerDeps, provider: FakeProvider, mail: FakeMailServers
) -> None:
    provider.profile_error = gmail_disabled()
    await handlers.complete_sign_in(await offer_sign_in(deps, "l1"), "code", None, "", deps, JAR)
    assert _failure(deps).code is FailureCode.GMAIL_DISABLED
    provider.profile_error = None
    mail.refuse = FailureCode.IMAP_AUTH_FAILED
    await handlers.complete_sign_in(await offer_sign_in(deps, "l2"), "code", None, "", deps, JAR)
    assert _failure(deps).code is FailureCode.IMAP_DISABLED
    mail.refuse = FailureCode.SMTP_AUTH_FAILED
    await handlers.complete_sign_in(await offer_sign_in(deps, "l3"), "code", None, "", deps, JAR)
    assert _failure(deps).code is FailureCode.SMTP_DISABLED


async def test_a_provider_outage_at_the_exchange_is_a_provider_error(
    deps: BrokerDeps, provider: FakeProvider
) -> None:
    provider.exchange_error = ProviderUnreachable("token endpoint answered 503")
    await handlers.complete_sign_in(await offer_sign_in(deps), "code", None, "", deps, JAR)
    assert _failure(deps).code is FailureCode.PROVIDER_ERROR


@pytest.mark.parametrize("error", ["invalid_client", "unauthorized_client"])
async def test_our_app_refused_at_the_exchange_is_deployment_misconfigured(
    deps: BrokerDeps, provider: FakeProvider, error: str, caplog: pytest.LogCaptureFixture
) -> None:
    provider.exchange_error = ProviderRefused(error, "Client authentication failed", 401)
    with caplog.at_level(logging.ERROR, logger="oauth_broker.sign_in"):
        await handlers.complete_sign_in(await offer_sign_in(deps), "code", None, "", deps, JAR)
    failure = _failure(deps)
    assert failure.code is FailureCode.DEPLOYMENT_MISCONFIGURED
    assert "misconfigured" in failure.message
    assert "few minutes" not in failure.remediation
    [logged] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert error in logged.getMessage()
    assert "google" in logged.getMessage()


@pytest.mark.parametrize(
    ("breaks", "code"),
    [
        ("another_account", FailureCode.ACCOUNT_MISMATCH),
        ("scope", FailureCode.SCOPE_MISSING),
        ("imap", FailureCode.IMAP_DISABLED),
        ("profile", FailureCode.GMAIL_DISABLED),
    ],
)
async def test_a_failed_sign_in_revokes_the_refresh_token_it_obtained(
    deps: BrokerDeps,
    provider: FakeProvider,
    mail: FakeMailServers,
    breaks: str,
    code: FailureCode,
) -> None:
    if breaks == "another_account":
        provider.signed_in_as = ("bob@gmail.com",)
    elif breaks == "scope":
        provider.scopes = frozenset({"openid", "email"})
    elif breaks == "imap":
        mail.refuse = FailureCode.IMAP_AUTH_FAILED
    else:
        provider.profile_error = gmail_disabled()
    await handlers.complete_sign_in(await offer_sign_in(deps), "code", None, "", deps, JAR)
    assert _failure(deps).code is code
    assert provider.revoked == ["refresh-1"]


async def test_without_a_refresh_token_the_access_token_is_revoked(
    deps: BrokerDeps, provider: FakeProvider
) -> None:
    provider.refresh_token = None
    await handlers.complete_sign_in(await offer_sign_in(deps), "code", None, "", deps, JAR)
    assert _failure(deps).code is FailureCode.NO_REFRESH_TOKEN
    assert provider.revoked == ["access-1"]


async def test_nothing_is_revoked_without_an_exchange_and_a_revocation_failure_changes_nothing(
    deps: BrokerDeps, provider: FakeProvider
) -> None:
    await handlers.complete_sign_in(await offer_sign_in(deps, "l1"), None, "access_denied", "",
                                    deps, JAR)  # fmt: skip
    provider.exchange_error = ProviderUnreachable("token endpoint answered 503")
    await handlers.complete_sign_in(await offer_sign_in(deps, "l2"), "code", None, "", deps, JAR)
    assert provider.revoked == []
    provider.exchange_error = None
    provider.signed_in_as = ("bob@gmail.com",)
    provider.revoke_error = ProviderUnreachable("revocation failed: ConnectError")
    outcome = await handlers.complete_sign_in(
        await offer_sign_in(deps, "l3"), "code", None, "", deps, JAR
    )
    assert outcome.result is CallbackResult.FAILED
    assert outcome.failure is not None
    assert outcome.failure.code is FailureCode.ACCOUNT_MISMATCH
    assert _failure(deps).code is FailureCode.ACCOUNT_MISMATCH


async def test_tokens_of_an_account_with_a_kept_grant_are_not_revoked(
    deps: BrokerDeps, provider: FakeProvider
) -> None:
    # Google revokes a user's whole grant to our app: a failed sign-in of an account whose
    # mailbox is linked must not cut that mailbox off.
    await _linked(deps)
    provider.scopes = frozenset({"openid", "email"})
    await handlers.complete_sign_in(await offer_sign_in(deps, "l2"), "code", None, "", deps, JAR)
    assert _failure(deps).code is FailureCode.SCOPE_MISSING
    assert provider.revoked == []


async def test_forged_replayed_and_expired_states_change_nothing(
    deps: BrokerDeps, clock: FakeClock
) -> None:
    state = await offer_sign_in(deps)
    forged = await handlers.complete_sign_in("forged", "code", None, "", deps, JAR)
    assert forged.refusal is CallbackRefusal.UNKNOWN_STATE
    assert (await handlers.complete_sign_in(state, "code", None, "", deps, JAR)).refusal is None
    late = await offer_sign_in(deps, "l2")
    published = len(_events(deps))
    replay = await handlers.complete_sign_in(state, "code", None, "", deps, JAR)
    assert replay.refusal is CallbackRefusal.STATE_USED
    clock.advance(timedelta(minutes=11))
    expired = await handlers.complete_sign_in(late, "code", None, "", deps, JAR)
    assert expired.refusal is CallbackRefusal.SESSION_EXPIRED
    assert len(_events(deps)) == published


async def test_a_callback_after_the_reservation_lapsed_is_refused_before_the_registry_says_so(
    deps: BrokerDeps, clock: FakeClock
) -> None:
    await handlers.when_link_requested_open_session(requested("l1"), deps)
    reservation = reserved("l1")
    short = reservation.data.model_copy(update={"expires_at": clock() + timedelta(minutes=2)})
    await handlers.when_link_reserved_offer_sign_in(
        reservation.model_copy(update={"data": short}), deps
    )
    offer = _events(deps)[-1]
    assert isinstance(offer, AuthorizationRequired)
    assert offer.data.expires_at == short.expires_at  # the reservation ends first
    state = await start_in_browser(deps, offer)
    clock.advance(timedelta(minutes=3))
    outcome = await handlers.complete_sign_in(state, "code", None, "", deps, JAR)
    assert outcome.refusal is CallbackRefusal.LINK_ENDED
    assert _events(deps) == [offer]


async def test_a_verified_grant_the_registry_never_answers_is_forgotten(
    deps: BrokerDeps, clock: FakeClock
) -> None:
    await handlers.complete_sign_in(await offer_sign_in(deps), "code", None, "", deps, JAR)
    clock.advance(timedelta(hours=23))
    await handlers.end_expired_sessions(deps)
    assert await deps.store.get_grant("l1") is not None
    clock.advance(timedelta(hours=2))
    await handlers.end_expired_sessions(deps)
    assert await deps.store.get_grant("l1") is None


async def test_a_link_the_registry_rejected_refuses_its_callback(deps: BrokerDeps) -> None:
    state = await offer_sign_in(deps)
    await handlers.when_link_rejected_discard(rejected("l1"), deps)
    outcome = await handlers.complete_sign_in(state, "code", None, "", deps, JAR)
    assert outcome.refusal is CallbackRefusal.LINK_ENDED


async def test_an_unfinished_sign_in_expires_with_session_expired(
    deps: BrokerDeps, clock: FakeClock
) -> None:
    await offer_sign_in(deps)
    clock.advance(timedelta(minutes=11))
    assert await handlers.end_expired_sessions(deps) == 1
    assert _failure(deps).code is FailureCode.SESSION_EXPIRED
    assert await handlers.end_expired_sessions(deps) == 0


# --- grants -----------------------------------------------------------------------------------


async def test_linked_grants_refresh_before_expiry_and_reconnect_when_refused(
    deps: BrokerDeps, provider: FakeProvider, clock: FakeClock
) -> None:
    await _linked(deps)
    assert await handlers.refresh_due_grants(deps) == RefreshTally()
    clock.advance(timedelta(minutes=56))
    assert await handlers.refresh_due_grants(deps) == RefreshTally(refreshed=1)
    assert provider.refreshed == 1
    provider.refresh_error = ProviderUnreachable("timeout")
    clock.advance(timedelta(minutes=56))
    assert await handlers.refresh_due_grants(deps) == RefreshTally(retrying=1)
    assert not [e for e in _events(deps) if isinstance(e, MailboxReconnectRequired)]
    provider.refresh_error = invalid_grant()
    # The back-off holds the next try until its time.
    assert await handlers.refresh_due_grants(deps) == RefreshTally()
    clock.advance(FIRST_REFRESH_RETRY)
    assert await handlers.refresh_due_grants(deps) == RefreshTally(failed_for_good=1)
    [reconnect] = [e for e in _events(deps) if isinstance(e, MailboxReconnectRequired)]
    assert reconnect.data.mailbox_id == "m1"
    assert reconnect.data.failure.code is FailureCode.RECONNECT_REQUIRED
    assert "invalid_grant" in (reconnect.data.failure.detail or "")
    assert await handlers.refresh_due_grants(deps) == RefreshTally()


@pytest.mark.parametrize(
    ("error", "recorded"),
    [
        (ProviderRefused("invalid_client", "client secret expired", 401), "invalid_client"),
        (ProviderRefused("unauthorized_client", "", 400), "unauthorized_client"),
        (ProviderRefused("temporarily_unavailable", "", 503), "temporarily_unavailable"),
        (ProviderUnreachable("token endpoint: ConnectError"), "unreachable"),
    ],
)
async def test_refresh_failures_not_the_users_back_off_and_never_flag_the_mailbox(
    deps: BrokerDeps,
    provider: FakeProvider,
    clock: FakeClock,
    error: Exception,
    recorded: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await _linked(deps)
    clock.advance(timedelta(minutes=56))
    provider.refresh_error = error
    waits = []
    for failures in range(1, 7):
        with caplog.at_level(logging.WARNING, logger="oauth_broker.token_upkeep"):
            assert await handlers.refresh_due_grants(deps) == RefreshTally(retrying=1)
        grant = await deps.store.get_grant("l1")
        assert grant is not None
        assert grant.status is GrantStatus.ACTIVE
        assert (grant.refresh_failures, grant.last_refresh_error) == (failures, recorded)
        assert grant.retry_at is not None
        waits.append(grant.retry_at - clock())
        # Nothing is tried before the back-off ends.
        clock.advance(grant.retry_at - clock() - timedelta(seconds=1))
        assert await handlers.refresh_due_grants(deps) == RefreshTally()
        clock.advance(timedelta(seconds=1))
    assert waits == [min(FIRST_REFRESH_RETRY * 2**n, MAX_REFRESH_RETRY) for n in range(6)]
    assert waits[-1] == MAX_REFRESH_RETRY
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 6
    assert all("google" in r.getMessage() and recorded in r.getMessage()
               for r in warnings)  # fmt: skip
    assert not [r for r in caplog.records if "refresh-1" in r.getMessage()]  # no token
    assert not [e for e in _events(deps) if isinstance(e, MailboxReconnectRequired)]
    # Mended (the secret fixed, the provider back): the next try succeeds, the grant is fresh.
    provider.refresh_error = None
    assert await handlers.refresh_due_grants(deps) == RefreshTally(refreshed=1)
    grant = await deps.store.get_grant("l1")
    assert grant is not None
    assert (grant.refresh_failures, grant.retry_at, grant.last_refresh_error) == (0, None, None)
    assert grant.expires_at == clock() + provider.lifetime


async def test_two_brokers_never_refresh_one_grant_at_once(
    deps: BrokerDeps, provider: FakeProvider, clock: FakeClock
) -> None:
    await _linked(deps)
    clock.advance(timedelta(minutes=56))
    [grant] = await deps.store.grants_due(clock() + timedelta(minutes=5), clock())
    # Both brokers read the same due grant; whichever comes second must not use its old copy.
    await asyncio.gather(handlers.refresh_grant(grant, deps), handlers.refresh_grant(grant, deps))
    assert provider.refreshed == 1
    clock.advance(timedelta(minutes=2))  # the leases are long gone: still nothing due
    await handlers.refresh_grant(grant, deps)
    assert provider.refreshed == 1


async def test_unlinking_revokes_and_deletes_the_tokens(
    deps: BrokerDeps, provider: FakeProvider
) -> None:
    await _linked(deps)
    unlinked = MailboxUnlinkedData(mailbox_id="m1", owner=ALICE, address=ADDRESS, link_id="l1")
    event = MailboxUnlinked(correlation_id="l1", producer="registry", data=unlinked)
    await handlers.when_mailbox_unlinked_revoke(event, deps)
    assert provider.revoked == ["refresh-1"]
    assert await deps.store.get_grant("l1") is None


async def test_a_rejected_verified_link_loses_its_tokens_without_revoking(
    deps: BrokerDeps, provider: FakeProvider
) -> None:
    await handlers.complete_sign_in(await offer_sign_in(deps), "code", None, "", deps, JAR)
    await handlers.when_link_rejected_discard(rejected("l1"), deps)
    assert await deps.store.get_grant("l1") is None
    assert provider.revoked == []


# --- bound to the requester (ADR 0014) -----------------------------------------------------


async def _offer(deps: BrokerDeps, link_id: str = "l1") -> AuthorizationRequired:
    await handlers.when_link_requested_open_session(requested(link_id), deps)
    await handlers.when_link_reserved_offer_sign_in(reserved(link_id), deps)
    offer = _events(deps)[-1]
    assert isinstance(offer, AuthorizationRequired)
    return offer


async def test_a_start_url_works_once(deps: BrokerDeps) -> None:
    offer = await _offer(deps)
    await start_in_browser(deps, offer)
    token = offer.data.authorize_url.rsplit("/", 1)[-1]
    again = await handlers.start_sign_in(token, deps)
    assert again.redirect_url is None
    assert again.refusal is CallbackRefusal.START_USED
    forged = await handlers.start_sign_in("forged", deps)
    assert forged.refusal is CallbackRefusal.UNKNOWN_STATE


async def test_a_start_url_gives_the_provider_a_fresh_state_stored_only_hashed(
    deps: BrokerDeps,
) -> None:
    offer = await _offer(deps)
    state = await start_in_browser(deps, offer)
    assert isinstance(deps.store, InMemoryBrokerStore)
    [start] = deps.store.starts.values()
    assert state not in (start.state_digest, start.binding_digest)
    assert offer.data.authorize_url.rsplit("/", 1)[-1] != state


async def test_a_callback_without_the_binding_cookie_changes_nothing(
    deps: BrokerDeps, provider: FakeProvider
) -> None:
    state = await offer_sign_in(deps)
    published = len(_events(deps))
    for jar in ({}, {name: "not-the-binding" for name in JAR}):
        outcome = await handlers.complete_sign_in(state, "code", None, "", deps, jar)
        assert outcome.refusal is CallbackRefusal.NOT_BOUND
    # A forged error callback (the attacker does not hold the cookie) ends nothing either.
    forged = await handlers.complete_sign_in(state, None, "access_denied", "", deps, {})
    assert forged.refusal is CallbackRefusal.NOT_BOUND
    assert len(_events(deps)) == published
    assert provider.nonce_seen == []
    # The real browser still completes its sign-in.
    outcome = await handlers.complete_sign_in(state, "code", None, "", deps, JAR)
    assert outcome.result is CallbackResult.VERIFIED


async def test_another_browser_opening_the_start_url_cannot_link_for_the_requester(
    deps: BrokerDeps,
) -> None:
    # The attacker requested the link and sent its URL to the victim, who signs in.
    victim: dict[str, str] = {}
    state = await start_in_browser(deps, await _offer(deps), victim)
    outcome = await handlers.complete_sign_in(state, "code", None, "", deps, victim)
    assert outcome.result is CallbackResult.VERIFIED
    assert outcome.owner == ALICE  # the page names the account being linked
    assert outcome.confirmation_code is not None
    # The victim's product session is another user's: the product confirms for that user.
    victim_user = MailboxOwner(account_id="acme", user_id="victim")
    refused = await handlers.confirm_sign_in(victim_user, outcome.confirmation_code, deps)
    assert refused is ConfirmRefusal.OTHER_USER
    assert not any(isinstance(e, MailboxVerified) for e in _events(deps))


async def test_a_code_is_confirmed_only_by_its_owner_and_once(deps: BrokerDeps) -> None:
    state = await offer_sign_in(deps)
    outcome = await handlers.complete_sign_in(state, "code", None, "", deps, JAR)
    code = outcome.confirmation_code
    assert code is not None
    for owner, presented in [
        (MailboxOwner(account_id="acme", user_id="u2"), code),
        (MailboxOwner(account_id="other", user_id="u1"), code),
        (ALICE, "forged"),
        (ALICE, ""),
    ]:
        # A wrong user's attempt is refused and does not use the code up.
        assert None is not await handlers.confirm_sign_in(owner, presented, deps)
    assert not any(isinstance(e, MailboxVerified) for e in _events(deps))
    assert None is await handlers.confirm_sign_in(ALICE, code, deps)
    # Reused: refused, and nothing is announced twice.
    assert await handlers.confirm_sign_in(ALICE, code, deps) is ConfirmRefusal.CODE_USED
    assert sum(isinstance(e, MailboxVerified) for e in _events(deps)) == 1


async def test_a_code_expires(deps: BrokerDeps, clock: FakeClock) -> None:
    outcome = await handlers.complete_sign_in(
        await offer_sign_in(deps), "code", None, "", deps, JAR
    )
    clock.advance(timedelta(minutes=11))
    assert outcome.confirmation_code is not None
    refused = await handlers.confirm_sign_in(ALICE, outcome.confirmation_code, deps)
    assert refused is ConfirmRefusal.CODE_EXPIRED
    assert not any(isinstance(e, MailboxVerified) for e in _events(deps))


async def test_a_rejected_link_cannot_be_confirmed(deps: BrokerDeps) -> None:
    outcome = await handlers.complete_sign_in(
        await offer_sign_in(deps), "code", None, "", deps, JAR
    )
    await handlers.when_link_rejected_discard(rejected("l1"), deps)
    assert outcome.confirmation_code is not None
    assert None is not await handlers.confirm_sign_in(ALICE, outcome.confirmation_code, deps)


# --- helpers ----------------------------------------------------------------------------------


async def _linked(deps: BrokerDeps) -> None:
    await handlers.complete_sign_in(await offer_sign_in(deps), "code", None, "", deps, JAR)
    data = MailboxLinkedData(
        link_id="l1", mailbox_id="m1", owner=ALICE, address=ADDRESS, provider=ProviderType.GOOGLE
    )
    linked = MailboxLinked(correlation_id="l1", producer="registry", data=data)
    await handlers.when_mailbox_linked_keep_fresh(linked, deps)
    grant = await deps.store.get_grant("l1")
    assert grant is not None
    assert grant.status is GrantStatus.ACTIVE


def _events(deps: BrokerDeps) -> list[Envelope]:
    publisher = deps.publisher
    assert isinstance(publisher, RecordingPublisher)
    return publisher.events


def _failure(deps: BrokerDeps) -> Failure:
    failed = _events(deps)[-1]
    assert isinstance(failed, VerificationFailed)
    return failed.data.failure
