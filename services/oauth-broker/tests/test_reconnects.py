"""Reconnect in place, the broker's part (docs/adr/0019): the sign-in of a reconnect link must
come from the account the mailbox was linked with, and MailboxReconnected hands the new tokens
to the mailbox's grant; with hand-written fakes."""

from datetime import timedelta

import pytest
from pydantic import SecretStr

from broker_fakes import (
    ADDRESS,
    ALICE,
    BOX,
    JAR,
    FakeClock,
    FakeProvider,
    fake_deps,
    invalid_grant,
    offer_sign_in,
    rejected,
    requested,
    reserved,
    start_in_browser,
)
from mailbox_link_contract.events import (
    AuthorizationRequired,
    Envelope,
    MailboxLinked,
    MailboxLinkedData,
    MailboxReconnected,
    MailboxReconnectedData,
    MailboxReconnectRequired,
    ProviderType,
    VerificationFailed,
)
from mailbox_link_contract.failures import FailureCode
from mailbox_link_shared.publishing import RecordingPublisher
from oauth_broker import handlers
from oauth_broker.adapters.oauth_client import OAuthApp, SignedInMailbox
from oauth_broker.domain.grants import GrantStatus, StoredGrant, TokenGrant
from oauth_broker.domain.providers import GOOGLE
from oauth_broker.handlers import BrokerDeps, CallbackResult
from oauth_broker.reconnects import same_account

APP = OAuthApp(ProviderType.GOOGLE, "client", SecretStr("secret"), "https://cb.test/", GOOGLE)
MAILBOX = "m1"


@pytest.fixture
def provider() -> FakeProvider:
    return FakeProvider(APP, signed_in_as=(ADDRESS,))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def deps(provider: FakeProvider, clock: FakeClock) -> BrokerDeps:
    return fake_deps(provider, clock=clock)


async def _linked_then_refused(deps: BrokerDeps, provider: FakeProvider, clock: FakeClock) -> None:
    """l1 links the mailbox m1 (refresh token refresh-1); then the provider refuses it."""
    await handlers.complete_sign_in(await offer_sign_in(deps, "l1"), "code", None, "", deps, JAR)
    data = MailboxLinkedData(
        link_id="l1", mailbox_id=MAILBOX, owner=ALICE, address=ADDRESS,
        provider=ProviderType.GOOGLE,
    )  # fmt: skip
    linked = MailboxLinked(correlation_id="l1", producer="registry", data=data)
    await handlers.when_mailbox_linked_keep_fresh(linked, deps)
    provider.refresh_error = invalid_grant()
    clock.advance(timedelta(minutes=56))
    await handlers.refresh_due_grants(deps)
    assert [e for e in _events(deps) if isinstance(e, MailboxReconnectRequired)]
    assert (await _grant(deps, "l1")).status is GrantStatus.RECONNECT_REQUIRED
    provider.refresh_error = None


async def _reconnect_sign_in(deps: BrokerDeps, provider: FakeProvider) -> CallbackResult:
    """r1, reserved to reconnect m1, is offered a sign-in; the user signs in (refresh-2)."""
    provider.refresh_token = "refresh-2"
    await handlers.when_link_requested_open_session(requested("r1"), deps)
    reservation = reserved("r1", mailbox_id=MAILBOX)
    await handlers.EVENT_HANDLERS[type(reservation)](reservation, deps)
    offer = _events(deps)[-1]
    assert isinstance(offer, AuthorizationRequired)  # offered like any link's
    assert offer.data.link_id == "r1"
    state = await start_in_browser(deps, offer)
    outcome = await handlers.complete_sign_in(state, "code", None, "", deps, JAR)
    return outcome.result


def _reconnected() -> MailboxReconnected:
    data = MailboxReconnectedData(
        link_id="r1", mailbox_id=MAILBOX, owner=ALICE, address=ADDRESS,
        provider=ProviderType.GOOGLE,
    )  # fmt: skip
    return MailboxReconnected(correlation_id="r1", producer="registry", data=data)


async def test_the_same_account_reconnects_and_its_new_tokens_are_kept_fresh(
    deps: BrokerDeps, provider: FakeProvider, clock: FakeClock
) -> None:
    await _linked_then_refused(deps, provider, clock)
    assert await _reconnect_sign_in(deps, provider) is CallbackResult.VERIFIED
    await handlers.EVENT_HANDLERS[MailboxReconnected](_reconnected(), deps)
    grant = await _grant(deps, "l1")  # the mailbox's grant, under the link it is linked by
    assert grant.status is GrantStatus.ACTIVE
    assert grant.mailbox_id == MAILBOX
    tokens = TokenGrant.from_json(BOX.open(grant.sealed, context=ADDRESS))
    assert tokens.refresh_token == "refresh-2"
    assert tokens.subject == "subject-1"  # the id token's and userinfo's sub
    assert await deps.store.get_grant("r1") is None
    # Google revokes every grant of the user at once: the refused tokens are only dropped.
    assert provider.revoked == []
    clock.advance(timedelta(minutes=56))
    assert (await handlers.refresh_due_grants(deps)).refreshed == 1
    assert provider.refreshed_with[-1] == "refresh-2"
    # A redelivery hands nothing over again.
    await handlers.EVENT_HANDLERS[MailboxReconnected](_reconnected(), deps)
    assert (await _grant(deps, "l1")).expires_at == grant.expires_at + timedelta(minutes=56)


async def test_another_account_gets_account_mismatch_and_the_mailbox_is_unchanged(
    deps: BrokerDeps, provider: FakeProvider, clock: FakeClock
) -> None:
    await _linked_then_refused(deps, provider, clock)
    before = await _grant(deps, "l1")
    provider.subject = "sub-someone-else"  # same address, another account (recreated user)
    assert await _reconnect_sign_in(deps, provider) is CallbackResult.FAILED
    failed = _events(deps)[-1]
    assert isinstance(failed, VerificationFailed)
    assert failed.data.failure.code is FailureCode.ACCOUNT_MISMATCH
    assert "sign in with the account you linked before" in failed.data.failure.detail
    assert await _grant(deps, "l1") == before
    await handlers.EVENT_HANDLERS[type(rejected("r1"))](rejected("r1"), deps)
    assert await deps.store.get_grant("r1") is None
    assert await deps.store.reconnect_of("r1") is None


async def test_a_link_of_a_new_mailbox_is_not_compared_with_any_account(
    deps: BrokerDeps, provider: FakeProvider
) -> None:
    provider.subject = "sub-anyone"
    state = await offer_sign_in(deps, "l1")
    outcome = await handlers.complete_sign_in(state, "code", None, "", deps, JAR)
    assert outcome.result is CallbackResult.VERIFIED


def test_a_grant_kept_before_subjects_compares_the_address_only() -> None:
    signed_in = SignedInMailbox((ADDRESS,), subject="sub-new")
    assert same_account(None, ADDRESS, signed_in, "sub-new")
    assert not same_account(None, "bob@gmail.com", signed_in, "sub-new")
    assert same_account("sub-new", ADDRESS, signed_in, "sub-new")
    assert not same_account("sub-old", ADDRESS, signed_in, "sub-new")
    assert not same_account("sub-old", ADDRESS, signed_in, None)


async def test_a_grant_kept_before_subjects_reconnects_by_its_address(
    deps: BrokerDeps, provider: FakeProvider, clock: FakeClock
) -> None:
    provider.subject = None
    await _linked_then_refused(deps, provider, clock)
    provider.subject = "sub-alice"
    assert await _reconnect_sign_in(deps, provider) is CallbackResult.VERIFIED


async def test_a_reconnect_of_a_mailbox_without_a_grant_keeps_the_new_one_fresh(
    deps: BrokerDeps, provider: FakeProvider
) -> None:
    assert await _reconnect_sign_in(deps, provider) is CallbackResult.VERIFIED
    await handlers.EVENT_HANDLERS[MailboxReconnected](_reconnected(), deps)
    grant = await _grant(deps, "r1")
    assert grant.status is GrantStatus.ACTIVE
    assert grant.mailbox_id == MAILBOX


def _events(deps: BrokerDeps) -> list[Envelope]:
    assert isinstance(deps.publisher, RecordingPublisher)
    return deps.publisher.events


async def _grant(deps: BrokerDeps, link_id: str) -> StoredGrant:
    grant = await deps.store.get_grant(link_id)
    assert grant is not None
    return grant


async def _linked_active(deps: BrokerDeps) -> None:
    """l1 links the mailbox m1 (refresh token refresh-1) and keeps it fresh."""
    await handlers.complete_sign_in(await offer_sign_in(deps, "l1"), "code", None, "", deps, JAR)
    data = MailboxLinkedData(
        link_id="l1", mailbox_id=MAILBOX, owner=ALICE, address=ADDRESS,
        provider=ProviderType.GOOGLE,
    )  # fmt: skip
    linked = MailboxLinked(correlation_id="l1", producer="registry", data=data)
    await handlers.when_mailbox_linked_keep_fresh(linked, deps)


@pytest.mark.parametrize("old_tokens_refused", [False, True])
async def test_a_reconnect_landing_during_a_refresh_keeps_its_new_tokens(
    deps: BrokerDeps, provider: FakeProvider, clock: FakeClock, old_tokens_refused: bool
) -> None:
    await _linked_active(deps)
    assert await _reconnect_sign_in(deps, provider) is CallbackResult.VERIFIED

    async def hand_over_meanwhile() -> None:
        provider.while_refreshing = None
        await handlers.EVENT_HANDLERS[MailboxReconnected](_reconnected(), deps)

    provider.while_refreshing = hand_over_meanwhile
    provider.refresh_error = invalid_grant() if old_tokens_refused else None
    clock.advance(timedelta(minutes=56))
    await handlers.refresh_due_grants(deps)
    grant = await _grant(deps, "l1")
    assert grant.status is GrantStatus.ACTIVE
    tokens = TokenGrant.from_json(BOX.open(grant.sealed, context=ADDRESS))
    assert tokens.refresh_token == "refresh-2"  # the reconnect's, not the refreshed old ones
    assert not [e for e in _events(deps) if isinstance(e, MailboxReconnectRequired)]
