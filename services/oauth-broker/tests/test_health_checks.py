"""The broker's health checks of OAuth mailboxes (docs/adr/0023) with hand-written fakes: a
refresh when due (the upkeep's, under its lease), the logins with the access token, and the
failure codes the registry decides on: only a grant gone for good asks for a reconnect."""

import asyncio
import dataclasses
from datetime import timedelta

import pytest
from pydantic import SecretStr

from broker_fakes import (
    ADDRESS,
    ALICE,
    BOX,
    FakeClock,
    FakeMailServers,
    FakeProvider,
    InMemoryBrokerStore,
    fake_deps,
    invalid_grant,
)
from mailbox_link_contract.events import (
    AuthMethod,
    MailboxChecked,
    MailboxCheckRequested,
    MailboxCheckRequestedData,
    MailboxReconnectRequired,
    ProviderType,
    ServerSettings,
)
from mailbox_link_contract.failures import FailureCode, refuses_credentials
from mailbox_link_shared.publishing import RecordingPublisher
from oauth_broker.adapters.oauth_client import OAuthApp
from oauth_broker.domain.grants import GrantStatus, StoredGrant, TokenGrant
from oauth_broker.domain.outcomes import ProviderRefused, ProviderUnreachable
from oauth_broker.domain.providers import GOOGLE
from oauth_broker.handlers import BrokerDeps, when_check_requested_refresh_and_log_in

APP = OAuthApp(ProviderType.GOOGLE, "client", SecretStr("secret"), "https://cb.test/", GOOGLE)
IMAP = ServerSettings(host="imap.gmail.com", port=993, security="ssl", username=ADDRESS)
SMTP = ServerSettings(host="smtp.gmail.com", port=465, security="ssl", username=ADDRESS)


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
def store() -> InMemoryBrokerStore:
    return InMemoryBrokerStore()


@pytest.fixture
def deps(
    provider: FakeProvider, mail: FakeMailServers, clock: FakeClock, store: InMemoryBrokerStore
) -> BrokerDeps:
    return fake_deps(provider, store=store, check_mailbox=mail, clock=clock, check_refresh_wait=0.5)


async def _linked_grant(
    store: InMemoryBrokerStore,
    clock: FakeClock,
    expires_in: timedelta = timedelta(hours=1),
    link_id: str = "l1",
    status: GrantStatus = GrantStatus.ACTIVE,
) -> StoredGrant:
    tokens = TokenGrant("access-1", "refresh-1", clock() + expires_in, frozenset())
    grant = StoredGrant(
        link_id, ALICE, ADDRESS, ProviderType.GOOGLE, status, tokens.expires_at,
        BOX.seal(tokens.to_json(), context=ADDRESS), verified_at=clock(), mailbox_id="m1",
    )  # fmt: skip
    await store.save_grant(grant)
    return grant


def _requested(
    n: int = 1, link_id: str = "l1", auth: AuthMethod = AuthMethod.OAUTH
) -> MailboxCheckRequested:
    data = MailboxCheckRequestedData(
        check_id=f"m1-{n}", mailbox_id="m1", link_id=link_id, owner=ALICE, address=ADDRESS,
        provider=ProviderType.GOOGLE, auth=auth, imap=IMAP, smtp=SMTP,
    )  # fmt: skip
    return MailboxCheckRequested(correlation_id=link_id, producer="registry", data=data)


def _answers(deps: BrokerDeps) -> list[MailboxChecked]:
    assert isinstance(deps.publisher, RecordingPublisher)
    for event in deps.publisher.events:
        assert "access-" not in event.model_dump_json()
        assert "refresh-" not in event.model_dump_json()
    return [e for e in deps.publisher.events if isinstance(e, MailboxChecked)]


def _reconnects(deps: BrokerDeps) -> list[MailboxReconnectRequired]:
    assert isinstance(deps.publisher, RecordingPublisher)
    return [e for e in deps.publisher.events if isinstance(e, MailboxReconnectRequired)]


def _code(answer: MailboxChecked) -> FailureCode | None:
    return None if answer.data.failure is None else answer.data.failure.code


async def test_a_fresh_grant_logs_in_with_its_token_and_is_ok(
    deps: BrokerDeps,
    store: InMemoryBrokerStore,
    clock: FakeClock,
    provider: FakeProvider,
    mail: FakeMailServers,
) -> None:
    await _linked_grant(store, clock)
    await when_check_requested_refresh_and_log_in(_requested(), deps)
    [answer] = _answers(deps)
    assert _code(answer) is None
    assert (answer.data.check_id, answer.data.mailbox_id) == ("m1-1", "m1")
    assert mail.logins == [("imap.gmail.com", ADDRESS, "access-1")]
    assert provider.refreshed == 0


async def test_a_grant_due_is_refreshed_first_and_the_new_token_logs_in(
    deps: BrokerDeps,
    store: InMemoryBrokerStore,
    clock: FakeClock,
    provider: FakeProvider,
    mail: FakeMailServers,
) -> None:
    await _linked_grant(store, clock, expires_in=timedelta(minutes=2))
    await when_check_requested_refresh_and_log_in(_requested(), deps)
    [answer] = _answers(deps)
    assert _code(answer) is None
    assert provider.refreshed == 1
    assert mail.logins == [("imap.gmail.com", ADDRESS, "access-2")]
    grant = await store.get_grant("l1")
    assert grant is not None
    assert grant.expires_at > clock() + timedelta(minutes=30)


async def test_a_refresh_refused_for_good_is_reconnect_required_announced_once(
    deps: BrokerDeps,
    store: InMemoryBrokerStore,
    clock: FakeClock,
    provider: FakeProvider,
    mail: FakeMailServers,
) -> None:
    await _linked_grant(store, clock, expires_in=timedelta(minutes=2))
    provider.refresh_error = invalid_grant()
    await when_check_requested_refresh_and_log_in(_requested(1), deps)
    await when_check_requested_refresh_and_log_in(_requested(2), deps)
    first, second = _answers(deps)
    assert _code(first) is _code(second) is FailureCode.RECONNECT_REQUIRED
    assert len(_reconnects(deps)) == 1  # the upkeep's; the second check finds it refused
    assert mail.logins == []


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ProviderRefused("temporarily_unavailable", status=503), FailureCode.PROVIDER_ERROR),
        (ProviderRefused("server_error", status=500), FailureCode.PROVIDER_ERROR),
        (ProviderUnreachable("connection refused"), FailureCode.PROVIDER_ERROR),
        (ProviderRefused("invalid_client", status=401), FailureCode.DEPLOYMENT_MISCONFIGURED),
    ],
)
async def test_a_refresh_failing_by_no_fault_of_the_user_only_degrades(
    deps: BrokerDeps,
    store: InMemoryBrokerStore,
    clock: FakeClock,
    provider: FakeProvider,
    error: Exception,
    code: FailureCode,
) -> None:
    await _linked_grant(store, clock, expires_in=timedelta(minutes=2))
    provider.refresh_error = error
    await when_check_requested_refresh_and_log_in(_requested(1), deps)
    # A second check during the upkeep's back-off does not ask the provider again.
    await when_check_requested_refresh_and_log_in(_requested(2), deps)
    answers = _answers(deps)
    assert [_code(a) for a in answers] == [code, code]
    assert not refuses_credentials(code)
    assert not _reconnects(deps)
    grant = await store.get_grant("l1")
    assert grant is not None
    assert (grant.status, grant.refresh_failures) == (GrantStatus.ACTIVE, 1)


async def test_a_grant_already_refused_answers_reconnect_required_without_a_refresh(
    deps: BrokerDeps, store: InMemoryBrokerStore, clock: FakeClock, provider: FakeProvider
) -> None:
    await _linked_grant(store, clock, status=GrantStatus.RECONNECT_REQUIRED)
    await when_check_requested_refresh_and_log_in(_requested(), deps)
    [answer] = _answers(deps)
    assert _code(answer) is FailureCode.RECONNECT_REQUIRED
    assert provider.refreshed == 0
    assert not _reconnects(deps)


async def test_a_mailbox_without_a_grant_must_be_reconnected(deps: BrokerDeps) -> None:
    await when_check_requested_refresh_and_log_in(_requested(), deps)
    [answer] = _answers(deps)
    assert _code(answer) is FailureCode.RECONNECT_REQUIRED


async def test_the_grant_is_found_by_its_mailbox_when_kept_under_another_link(
    deps: BrokerDeps, store: InMemoryBrokerStore, clock: FakeClock, mail: FakeMailServers
) -> None:
    # Reconnected in place: the tokens live under the mailbox's first link.
    await _linked_grant(store, clock, link_id="l-first")
    await when_check_requested_refresh_and_log_in(_requested(link_id="l-reconnect"), deps)
    [answer] = _answers(deps)
    assert _code(answer) is None
    assert mail.logins == [("imap.gmail.com", ADDRESS, "access-1")]


async def test_a_refused_login_is_answered_with_its_code(
    deps: BrokerDeps, store: InMemoryBrokerStore, clock: FakeClock, mail: FakeMailServers
) -> None:
    await _linked_grant(store, clock)
    mail.refuse = FailureCode.IMAP_AUTH_FAILED
    await when_check_requested_refresh_and_log_in(_requested(), deps)
    [answer] = _answers(deps)
    assert _code(answer) is FailureCode.IMAP_AUTH_FAILED


async def test_a_password_mailbox_is_left_to_the_imap_verifier(
    deps: BrokerDeps, store: InMemoryBrokerStore, clock: FakeClock, mail: FakeMailServers
) -> None:
    await _linked_grant(store, clock)
    await when_check_requested_refresh_and_log_in(_requested(auth=AuthMethod.PASSWORD), deps)
    assert _answers(deps) == []
    assert mail.logins == []


async def test_a_check_waits_for_another_refresher_and_uses_its_tokens(
    deps: BrokerDeps,
    store: InMemoryBrokerStore,
    clock: FakeClock,
    provider: FakeProvider,
    mail: FakeMailServers,
) -> None:
    grant = await _linked_grant(store, clock, expires_in=timedelta(minutes=2))
    store.leases["l1"] = clock() + timedelta(minutes=1)  # another broker is refreshing it

    async def the_other_refresher() -> None:
        await asyncio.sleep(0.2)
        renewed = TokenGrant("access-other", "refresh-1", clock() + timedelta(hours=1), frozenset())
        sealed = BOX.seal(renewed.to_json(), context=ADDRESS)
        assert await store.renew_grant("l1", sealed, renewed.expires_at, replacing=grant.sealed)

    await asyncio.gather(
        when_check_requested_refresh_and_log_in(_requested(), deps), the_other_refresher()
    )
    [answer] = _answers(deps)
    assert _code(answer) is None
    assert provider.refreshed == 0
    assert mail.logins == [("imap.gmail.com", ADDRESS, "access-other")]


async def test_a_refresher_that_never_finishes_ends_the_check_with_a_timeout(
    deps: BrokerDeps, store: InMemoryBrokerStore, clock: FakeClock, mail: FakeMailServers
) -> None:
    await _linked_grant(store, clock, expires_in=timedelta(minutes=2))
    store.leases["l1"] = clock() + timedelta(minutes=1)
    deps = dataclasses.replace(deps, check_refresh_wait=0.3)
    await when_check_requested_refresh_and_log_in(_requested(), deps)
    [answer] = _answers(deps)
    assert _code(answer) is FailureCode.TIMEOUT
    assert mail.logins == []


async def test_a_due_grant_of_a_provider_not_loaded_is_the_operators_trouble(
    deps: BrokerDeps, store: InMemoryBrokerStore, clock: FakeClock, mail: FakeMailServers
) -> None:
    await _linked_grant(store, clock, expires_in=timedelta(minutes=2))
    deps = dataclasses.replace(deps, clients={})
    await when_check_requested_refresh_and_log_in(_requested(), deps)
    [answer] = _answers(deps)
    assert _code(answer) is FailureCode.DEPLOYMENT_MISCONFIGURED
    assert not _reconnects(deps)
    assert store.leases == {}  # no lease taken that nobody frees
    assert mail.logins == []
