"""The internal token route on in-memory storage and a fake provider: only the registry's key
(scope token_issue) gets a token; one that expires within the margin asked for is refreshed
first, through the upkeep's lease; the answer is sealed to the address and holds no refresh
token; a grant refused for good answers 409 and announces the reconnect once."""

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from broker_fakes import (
    ALICE,
    BOX,
    FakeClock,
    FakeProvider,
    InMemoryBrokerStore,
    fake_deps,
)
from broker_fakes import invalid_grant as refused_for_good
from mailbox_link_contract.events import MailboxReconnectRequired, ProviderType, ServerSettings
from mailbox_link_contract.values import EncryptedSecret
from mailbox_link_shared.http import CallerKeys, build_http_app
from mailbox_link_shared.oidc_providers import SaslMechanism
from mailbox_link_shared.publishing import RecordingPublisher
from mailbox_link_shared.scopes import Scope, caller_keys
from oauth_broker.adapters.oauth_client import OAuthApp
from oauth_broker.domain.grants import GrantStatus, StoredGrant, TokenGrant
from oauth_broker.domain.outcomes import ProviderUnreachable
from oauth_broker.domain.providers import GOOGLE, oidc_key
from oauth_broker.entrypoints.token_http import build_token_router
from oauth_broker.handlers import BrokerDeps, MailServers
from oauth_broker.token_issue import NotIssued, TokenNotIssued, issue_access_token

ADDRESS = "box@example.org"
TOKENS = {"registry": "registry-token-".ljust(32, "r"), "product": "product-token-".ljust(32, "p")}
KEYS = CallerKeys(
    caller_keys(
        {n: SecretStr(t) for n, t in TOKENS.items()},
        {"registry": [Scope.TOKEN_ISSUE], "product": [Scope.LINKS, Scope.SIGN_IN_CONFIRM]},
        {},
    )
)
APP = OAuthApp(ProviderType.GOOGLE, "client", SecretStr("secret"), "https://cb.test/", GOOGLE)
PATH = "/v1/internal/grants/l1/access-token"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def provider() -> FakeProvider:
    return FakeProvider(APP, signed_in_as=(ADDRESS,))


@pytest.fixture
def deps(provider: FakeProvider, clock: FakeClock) -> BrokerDeps:
    return fake_deps(provider, clock=clock)


@pytest.fixture
async def broker(deps: BrokerDeps) -> AsyncIterator[httpx.AsyncClient]:
    app = build_http_app(
        title="broker under test",
        router=build_token_router(deps, KEYS.require(Scope.TOKEN_ISSUE)),
        keys=KEYS,
        on_start=[],
        on_stop=[],
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://broker.test",
        headers={"Authorization": f"Bearer {TOKENS['registry']}"},
    ) as client:
        yield client


async def linked(
    deps: BrokerDeps,
    expires_in: timedelta,
    status: GrantStatus = GrantStatus.ACTIVE,
    **changes: Any,
) -> StoredGrant:
    """Stores the grant of link l1 (mailbox m1), its access token expiring in `expires_in`."""
    expires_at = deps.clock() + expires_in
    tokens = TokenGrant("access-1", "refresh-1", expires_at, frozenset({"mail"}))
    grant = StoredGrant(
        "l1", ALICE, ADDRESS, ProviderType.GOOGLE, status, expires_at,
        BOX.seal(tokens.to_json(), ADDRESS), verified_at=deps.clock(), mailbox_id="m1",
    )  # fmt: skip
    grant = replace(grant, **changes)
    await deps.store.save_grant(grant)
    return grant


def opened(answer: dict[str, Any], address: str = ADDRESS) -> str:
    return BOX.open(EncryptedSecret.model_validate(answer["access_token"]), address)


async def test_a_fresh_token_is_handed_out_sealed_to_the_address_without_a_refresh(
    deps: BrokerDeps, broker: httpx.AsyncClient, provider: FakeProvider
) -> None:
    await linked(deps, timedelta(minutes=50))
    answer = await broker.post(PATH, json={"min_valid_seconds": 600})
    assert answer.status_code == 200, answer.text
    assert answer.headers["cache-control"] == "no-store"
    assert answer.headers["pragma"] == "no-cache"
    body = answer.json()
    assert opened(body) == "access-1"
    assert body["sasl_mechanism"] == "XOAUTH2"
    assert body["address"] == ADDRESS
    assert body["refreshed"] is False
    assert "refresh-1" not in answer.text
    assert provider.refreshed == 0
    with pytest.raises(Exception, match="ciphertext"):
        opened(body, "other@example.org")  # bound to the address


async def test_a_token_expiring_within_the_margin_is_refreshed_first(
    deps: BrokerDeps, broker: httpx.AsyncClient, provider: FakeProvider, clock: FakeClock
) -> None:
    await linked(deps, timedelta(minutes=8))
    answer = await broker.post(PATH, json={"min_valid_seconds": 900})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert opened(body) == "access-2"
    assert body["refreshed"] is True
    assert body["expires_at"] == (clock() + provider.lifetime).isoformat()
    stored = await deps.store.get_grant("l1")
    assert stored is not None
    assert stored.expires_at == clock() + provider.lifetime
    assert provider.refreshed_with == ["refresh-1"]
    # The stored grant renewed: the next ask needs no refresh.
    again = await broker.post(PATH, json={"min_valid_seconds": 900})
    assert opened(again.json()) == "access-2"
    assert provider.refreshed == 1


async def test_without_a_body_the_default_margin_applies(
    deps: BrokerDeps, broker: httpx.AsyncClient, provider: FakeProvider
) -> None:
    await linked(deps, timedelta(minutes=4))  # within the default 300 s
    answer = await broker.post(PATH)
    assert answer.status_code == 200, answer.text
    assert provider.refreshed == 1


async def test_a_grant_refused_for_good_answers_409_and_announces_the_reconnect(
    deps: BrokerDeps, broker: httpx.AsyncClient, provider: FakeProvider
) -> None:
    await linked(deps, timedelta(minutes=1))
    provider.refresh_error = refused_for_good()
    answer = await broker.post(PATH, json={"min_valid_seconds": 300})
    assert answer.status_code == 409, answer.text
    assert answer.json()["error"] == "reconnect_required"
    assert answer.headers["cache-control"] == "no-store"
    assert isinstance(deps.publisher, RecordingPublisher)
    [event] = deps.publisher.events
    assert isinstance(event, MailboxReconnectRequired)
    again = await broker.post(PATH, json={"min_valid_seconds": 0})
    assert again.status_code == 409
    assert len(deps.publisher.events) == 1


async def test_a_provider_outage_answers_503_with_retry_after_and_is_not_hammered(
    deps: BrokerDeps, broker: httpx.AsyncClient, provider: FakeProvider
) -> None:
    await linked(deps, timedelta(minutes=1))
    provider.refresh_error = ProviderUnreachable("timed out")
    answer = await broker.post(PATH, json={"min_valid_seconds": 300})
    assert answer.status_code == 503, answer.text
    assert int(answer.headers["retry-after"]) == deps.refresh_backoff.delay(1).total_seconds()
    again = await broker.post(PATH, json={"min_valid_seconds": 300})
    assert again.status_code == 503
    assert int(again.headers["retry-after"]) >= 1
    stored = await deps.store.get_grant("l1")
    assert stored is not None
    assert stored.refresh_failures == 1  # the second ask did not try again


async def test_no_grant_is_404_and_other_keys_get_403(
    deps: BrokerDeps, broker: httpx.AsyncClient
) -> None:
    missing = await broker.post(PATH, json={"min_valid_seconds": 300})
    assert missing.status_code == 404
    await linked(deps, timedelta(minutes=50))
    product = {"Authorization": f"Bearer {TOKENS['product']}"}
    refused = await broker.post(PATH, json={}, headers=product)
    assert refused.status_code == 403
    assert "access_token" not in refused.text


@pytest.mark.parametrize(
    "body",
    [{"min_valid_seconds": 3301}, {"min_valid_seconds": -1}, {"min_valid_seconds": "300"},
     {"min_valid_seconds": 30.5}, {"min_valid_seconds": True}, {"other": 1}],
)  # fmt: skip
async def test_a_margin_out_of_range_or_not_an_integer_is_refused(
    deps: BrokerDeps, broker: httpx.AsyncClient, body: dict[str, Any]
) -> None:
    await linked(deps, timedelta(minutes=50))
    answer = await broker.post(PATH, json=body)
    assert answer.status_code == 422, answer.text


async def test_an_ask_waits_for_another_brokers_refresh_and_reads_its_token(
    deps: BrokerDeps, provider: FakeProvider, clock: FakeClock
) -> None:
    grant = await linked(deps, timedelta(minutes=1))
    store = deps.store
    assert isinstance(store, InMemoryBrokerStore)
    store.leases["l1"] = clock() + timedelta(minutes=1)  # another broker is refreshing

    async def the_other_finishes() -> None:
        await asyncio.sleep(0.3)
        fresh = TokenGrant("access-other", "refresh-1", clock() + timedelta(hours=1), frozenset())
        sealed = BOX.seal(fresh.to_json(), ADDRESS)
        assert await store.renew_grant("l1", sealed, fresh.expires_at, replacing=grant.sealed)

    other = asyncio.create_task(the_other_finishes())
    issued = await issue_access_token("l1", timedelta(minutes=5), deps)
    await other
    assert BOX.open(issued.access_token, ADDRESS) == "access-other"
    assert provider.refreshed == 0  # never two refreshes of one grant at once


async def test_an_ask_gives_up_when_the_lease_is_not_freed_in_time(
    deps: BrokerDeps, clock: FakeClock
) -> None:
    await linked(deps, timedelta(minutes=1))
    assert isinstance(deps.store, InMemoryBrokerStore)
    deps.store.leases["l1"] = clock() + timedelta(minutes=1)
    with pytest.raises(TokenNotIssued) as refused:
        await issue_access_token("l1", timedelta(minutes=5), deps, timedelta(seconds=0.3))
    assert refused.value.reason is NotIssued.UNAVAILABLE


async def test_a_grant_not_yet_activated_is_handed_out_while_fresh(deps: BrokerDeps) -> None:
    # The registry linked it; this broker has not applied MailboxLinked yet.
    await linked(deps, timedelta(minutes=50), GrantStatus.VERIFIED)
    issued = await issue_access_token("l1", timedelta(minutes=5), deps)
    assert BOX.open(issued.access_token, ADDRESS) == "access-1"


async def test_an_openid_providers_mechanism_is_the_configured_one(deps: BrokerDeps) -> None:
    key = oidc_key("corp")
    server = ServerSettings(host="mail.corp.test", port=993, security="ssl", username="-")
    servers = MailServers(server, server, SaslMechanism.OAUTHBEARER)
    deps = replace(deps, mail_servers={key: servers})
    await linked(deps, timedelta(minutes=50), provider=ProviderType.OIDC, oidc_provider="corp")
    issued = await issue_access_token("l1", timedelta(minutes=5), deps)
    assert issued.sasl_mechanism is SaslMechanism.OAUTHBEARER
