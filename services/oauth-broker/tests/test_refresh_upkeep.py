"""Each kind of refresh failure against the local authorization server, with the real client,
the real MongoDB-protocol store, and a clock the test moves past each back-off.

Only invalid_grant (the user's grant gone) asks the user to reconnect. Our app refused
(invalid_client), the provider down (5xx) or unreachable are retried with back-off and never
flag the mailbox; once mended, the next retry refreshes the grant.
"""

import logging
import secrets
import ssl
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from pymongo import AsyncMongoClient
from test_oauth_client import REDIRECT_URI, TIMEOUT, new_account, sign_in

from broker_fakes import ALICE, BOX, FakeMailServers
from localinfra import LocalOAuthServer, LocalStack
from mailbox_link_contract.events import MailboxReconnectRequired, ProviderType, utc_now
from mailbox_link_contract.failures import FailureCode
from mailbox_link_shared.publishing import RecordingPublisher
from mailbox_link_shared.settings import tls_context
from oauth_broker import handlers
from oauth_broker.adapters.broker_store import MongoBrokerStore
from oauth_broker.adapters.discovery import apply_discovery, fetch_discovery
from oauth_broker.adapters.oauth_client import OAuthApp, OAuthClient
from oauth_broker.domain.grants import (
    FIRST_REFRESH_RETRY,
    GrantStatus,
    RefreshBackoff,
    StoredGrant,
    TokenGrant,
)
from oauth_broker.domain.providers import DEFAULT_ENDPOINTS
from oauth_broker.handlers import BrokerDeps
from oauth_broker.token_upkeep import RefreshTally

# An id with ':' and a secret with '+', '%' and ':', as RFC 6749 2.3.1 allows.
CLIENT_ID = f"upkeep:{secrets.token_hex(4)}"
CLIENT_SECRET = f"up+keep%25:{secrets.token_urlsafe(12)}"
BACKOFF = RefreshBackoff(FIRST_REFRESH_RETRY, FIRST_REFRESH_RETRY * 8)


class Clock:
    """Real time to start with; moved only by the test."""

    def __init__(self) -> None:
        self.now = utc_now()

    def __call__(self) -> datetime:
        return self.now

    def advance(self, by: timedelta) -> None:
        self.now += by


@pytest.fixture(scope="module")
def oauth(local_stack: LocalStack) -> LocalOAuthServer:
    local_stack.oauth_server.register_client(CLIENT_ID, CLIENT_SECRET, [REDIRECT_URI])
    return local_stack.oauth_server


@pytest.fixture(scope="module")
def tls(local_stack: LocalStack) -> ssl.SSLContext:
    return tls_context(local_stack.endpoints.ca_file)


@pytest.fixture
async def client(oauth: LocalOAuthServer, tls: ssl.SSLContext) -> AsyncIterator[OAuthClient]:
    url = f"{oauth.issuer('yahoo')}/.well-known/openid-configuration"
    endpoints = apply_discovery(
        DEFAULT_ENDPOINTS[ProviderType.YAHOO], await fetch_discovery(url, tls, TIMEOUT)
    )
    app = OAuthApp(ProviderType.YAHOO, CLIENT_ID, SecretStr(CLIENT_SECRET), REDIRECT_URI, endpoints)
    built = OAuthClient(app, tls, TIMEOUT)
    yield built
    await built.aclose()


@pytest.fixture
async def store(local_stack: LocalStack) -> AsyncIterator[MongoBrokerStore]:
    uri = local_stack.endpoints.mongodb_uri
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri, tz_aware=True)
    name = f"broker-upkeep-{secrets.token_hex(4)}"
    built = MongoBrokerStore(mongo, name)
    await built.create_indexes()
    yield built
    await mongo.drop_database(name)
    await mongo.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def broker(store: MongoBrokerStore, client: OAuthClient, clock: Clock) -> BrokerDeps:
    return BrokerDeps(
        store=store,
        publisher=RecordingPublisher(),
        secret_box=BOX,
        clients={ProviderType.YAHOO: client},
        check_mailbox=FakeMailServers(),
        refresh_margin=timedelta(minutes=5),
        refresh_backoff=BACKOFF,
        clock=clock,
    )


@pytest.fixture
async def browser(tls: ssl.SSLContext) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(verify=tls, timeout=TIMEOUT) as opened:
        yield opened


async def linked_grant(
    oauth: LocalOAuthServer,
    client: OAuthClient,
    store: MongoBrokerStore,
    clock: Clock,
    browser: httpx.AsyncClient,
) -> tuple[str, str]:
    """Signs a fresh Yahoo account in and stores its grant as a linked mailbox's, due for a
    refresh; returns the link id and the address."""
    address = new_account(oauth, ProviderType.YAHOO)
    fresh, code = await sign_in(browser, client, address)
    tokens = await client.exchange_code(code, fresh.code_verifier, clock())
    assert tokens.refresh_token
    grant = TokenGrant(tokens.access_token, tokens.refresh_token, clock(), tokens.scopes)
    link_id = f"l-{secrets.token_hex(4)}"
    stored = StoredGrant(
        link_id, ALICE, address, ProviderType.YAHOO, GrantStatus.ACTIVE, clock(),
        BOX.seal(grant.to_json(), context=address), verified_at=clock(), mailbox_id="m1",
    )  # fmt: skip
    await store.save_grant(stored)
    return link_id, address


async def grant_of(store: MongoBrokerStore, link_id: str) -> StoredGrant:
    grant = await store.get_grant(link_id)
    assert grant is not None
    return grant


def reconnects(deps: BrokerDeps) -> list[MailboxReconnectRequired]:
    assert isinstance(deps.publisher, RecordingPublisher)
    return [e for e in deps.publisher.events if isinstance(e, MailboxReconnectRequired)]


async def test_a_revoked_grant_asks_the_user_to_reconnect(
    oauth: LocalOAuthServer,
    client: OAuthClient,
    store: MongoBrokerStore,
    clock: Clock,
    browser: httpx.AsyncClient,
) -> None:
    deps = broker(store, client, clock)
    link_id, address = await linked_grant(oauth, client, store, clock, browser)
    assert await handlers.refresh_due_grants(deps) == RefreshTally(refreshed=1)
    clock.advance(timedelta(hours=1))
    oauth.revoke_refresh_tokens("yahoo", address)  # the user removed our app

    assert await handlers.refresh_due_grants(deps) == RefreshTally(failed_for_good=1)

    assert (await grant_of(store, link_id)).status is GrantStatus.RECONNECT_REQUIRED
    [event] = reconnects(deps)
    assert event.data.failure.code is FailureCode.RECONNECT_REQUIRED
    assert "invalid_grant" in (event.data.failure.detail or "")


async def test_a_rotated_client_secret_is_retried_and_works_once_fixed(
    oauth: LocalOAuthServer,
    client: OAuthClient,
    store: MongoBrokerStore,
    clock: Clock,
    browser: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    deps = broker(store, client, clock)
    link_id, _ = await linked_grant(oauth, client, store, clock, browser)
    # The operator rotated the secret at the provider, not yet in the broker.
    oauth.register_client(CLIENT_ID, "the-new-secret", [REDIRECT_URI])
    try:
        with caplog.at_level(logging.WARNING, logger="oauth_broker.token_upkeep"):
            for failures in (1, 2, 3):
                assert await handlers.refresh_due_grants(deps) == RefreshTally(retrying=1)
                grant = await grant_of(store, link_id)
                assert grant.status is GrantStatus.ACTIVE
                assert (grant.refresh_failures, grant.last_refresh_error) == (
                    failures, "invalid_client",
                )  # fmt: skip
                assert grant.retry_at == clock() + BACKOFF.delay(failures)
                assert await handlers.refresh_due_grants(deps) == RefreshTally()  # backing off
                clock.advance(BACKOFF.delay(failures))
    finally:
        oauth.register_client(CLIENT_ID, CLIENT_SECRET, [REDIRECT_URI])  # fixed
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3
    assert all("invalid_client" in w and "yahoo" in w for w in warnings)
    assert not reconnects(deps)

    assert await handlers.refresh_due_grants(deps) == RefreshTally(refreshed=1)

    grant = await grant_of(store, link_id)
    assert (grant.status, grant.refresh_failures, grant.retry_at) == (GrantStatus.ACTIVE, 0, None)
    assert grant.expires_at > clock() + timedelta(minutes=30)
    assert not reconnects(deps)


@pytest.mark.parametrize(("status", "error"), [(503, "temporarily_unavailable"), (500, "")])
async def test_a_provider_outage_is_retried(
    oauth: LocalOAuthServer,
    client: OAuthClient,
    store: MongoBrokerStore,
    clock: Clock,
    browser: httpx.AsyncClient,
    status: int,
    error: str,
) -> None:
    deps = broker(store, client, clock)
    link_id, _ = await linked_grant(oauth, client, store, clock, browser)
    oauth.token_outage("yahoo", status, error)
    try:
        assert await handlers.refresh_due_grants(deps) == RefreshTally(retrying=1)
    finally:
        oauth.end_token_outage("yahoo")
    grant = await grant_of(store, link_id)
    assert grant.last_refresh_error == (error or "unreachable")
    clock.advance(BACKOFF.delay(1))

    assert await handlers.refresh_due_grants(deps) == RefreshTally(refreshed=1)
    assert (await grant_of(store, link_id)).refresh_failures == 0
    assert not reconnects(deps)


async def test_an_unreachable_provider_is_retried(
    oauth: LocalOAuthServer,
    client: OAuthClient,
    store: MongoBrokerStore,
    clock: Clock,
    browser: httpx.AsyncClient,
    tls: ssl.SSLContext,
) -> None:
    link_id, _ = await linked_grant(oauth, client, store, clock, browser)
    closed = "https://127.0.0.1:9/token"  # discard port: nothing listens
    endpoints = replace(client.app.endpoints, token_url=closed)
    offline = OAuthClient(replace(client.app, endpoints=endpoints), tls, 2.0)
    try:
        cut_off = broker(store, offline, clock)
        assert await handlers.refresh_due_grants(cut_off) == RefreshTally(retrying=1)
        assert (await grant_of(store, link_id)).last_refresh_error == "unreachable"
        assert not reconnects(cut_off)
    finally:
        await offline.aclose()
    clock.advance(BACKOFF.delay(1))
    deps = broker(store, client, clock)  # the network is back

    assert await handlers.refresh_due_grants(deps) == RefreshTally(refreshed=1)
    assert (await grant_of(store, link_id)).status is GrantStatus.ACTIVE
