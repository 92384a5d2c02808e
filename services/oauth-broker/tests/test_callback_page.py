"""The callback as a browser meets it: pages, status codes, and the return-URL redirect."""

from collections.abc import AsyncIterator
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from pydantic import SecretStr

from broker_fakes import (
    BOX,
    FakeClock,
    FakeMailServers,
    FakeProvider,
    InMemoryBrokerStore,
    offer_sign_in,
)
from mailbox_link_contract.events import ProviderType
from mailbox_link_shared.http import build_http_app
from mailbox_link_shared.publishing import RecordingPublisher
from oauth_broker.adapters.oauth_client import OAuthApp
from oauth_broker.domain.providers import GOOGLE
from oauth_broker.entrypoints.http import build_public_router
from oauth_broker.handlers import BrokerDeps

APP = OAuthApp(ProviderType.GOOGLE, "client", SecretStr("secret"), "https://cb.test/", GOOGLE)
RETURN_URL = "https://app.example.com/mailboxes?tab=linked"


@pytest.fixture
def deps() -> BrokerDeps:
    return BrokerDeps(
        store=InMemoryBrokerStore(),
        publisher=RecordingPublisher(),
        secret_box=BOX,
        clients={ProviderType.GOOGLE: FakeProvider(APP, signed_in_as=("alice@gmail.com",))},
        check_mailbox=FakeMailServers(),
        session_lifetime=timedelta(minutes=10),
        clock=FakeClock(),
    )


async def _browser(deps: BrokerDeps, return_url: str | None) -> httpx.AsyncClient:
    app = build_http_app(
        title="broker under test",
        router=None,
        service_keys={},
        public_router=build_public_router(deps, return_url),
        on_start=[],
        on_stop=[],
    )
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://b.test")


@pytest.fixture
async def browser(deps: BrokerDeps) -> AsyncIterator[httpx.AsyncClient]:
    async with await _browser(deps, None) as client:
        yield client


async def test_a_verified_sign_in_shows_the_connected_page(
    deps: BrokerDeps, browser: httpx.AsyncClient
) -> None:
    state = await offer_sign_in(deps)
    page = await browser.get("/v1/oauth/callback", params={"state": state, "code": "c"})
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "Mailbox connected" in page.text
    assert "alice@gmail.com" in page.text


async def test_a_failed_sign_in_shows_the_reason_and_the_fix(
    deps: BrokerDeps, browser: httpx.AsyncClient
) -> None:
    state = await offer_sign_in(deps)
    params = {"state": state, "error": "access_denied", "error_description": "<b>no</b>"}
    page = await browser.get("/v1/oauth/callback", params=params)
    assert page.status_code == 200
    assert 'data-code="consent_denied"' in page.text
    assert "Allow" in page.text  # the remediation
    assert "<b>" not in page.text


@pytest.mark.parametrize("query", [{}, {"state": "forged", "code": "c"}, {"code": "c"}])
async def test_a_callback_without_a_known_state_is_a_400_page(
    browser: httpx.AsyncClient, query: dict[str, str]
) -> None:
    page = await browser.get("/v1/oauth/callback", params=query)
    assert page.status_code == 400
    assert 'data-code="unknown_state"' in page.text


async def test_a_return_url_gets_the_outcome_in_its_query(deps: BrokerDeps) -> None:
    state = await offer_sign_in(deps)
    async with await _browser(deps, RETURN_URL) as browser:
        answer = await browser.get(
            "/v1/oauth/callback", params={"state": state, "error": "access_denied"}
        )
        assert answer.status_code == 303
        location = urlsplit(answer.headers["location"])
        query = parse_qs(location.query)
        assert f"{location.scheme}://{location.netloc}{location.path}" == RETURN_URL.split("?")[0]
        assert query["tab"] == ["linked"]
        assert query["link_id"] == ["l1"]
        assert query["result"] == ["failed"]
        assert query["error"] == ["consent_denied"]
        # A refusal stays a page: there is no link to return to.
        replay = await browser.get("/v1/oauth/callback", params={"state": state})
        assert replay.status_code == 400
