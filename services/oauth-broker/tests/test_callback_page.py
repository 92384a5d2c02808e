"""The callback as a browser meets it: pages, status codes, and the return-URL redirect."""

from collections.abc import AsyncIterator
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from broker_fakes import (
    FakeProvider,
    fake_deps,
    requested,
    reserved,
    start_token,
)
from mailbox_link_contract.events import (
    AuthorizationRequired,
    MailboxOwner,
    MailboxVerified,
    ProviderType,
)
from mailbox_link_shared.http import CallerKeys, build_http_app
from mailbox_link_shared.publishing import RecordingPublisher
from mailbox_link_shared.scopes import caller_keys
from oauth_broker import handlers
from oauth_broker.adapters.oauth_client import OAuthApp
from oauth_broker.config import CONFIRM_SCOPE
from oauth_broker.domain.providers import GOOGLE
from oauth_broker.entrypoints.http import build_public_router, build_service_router
from oauth_broker.handlers import BrokerDeps

APP = OAuthApp(ProviderType.GOOGLE, "client", SecretStr("secret"), "https://cb.test/", GOOGLE)
RETURN_URL = "https://app.example.com/mailboxes?tab=linked"


@pytest.fixture
def deps() -> BrokerDeps:
    return fake_deps(FakeProvider(APP, signed_in_as=("alice@gmail.com",)))


async def _browser(deps: BrokerDeps, return_url: str | None) -> httpx.AsyncClient:
    app = build_http_app(
        title="broker under test",
        router=None,
        keys=CallerKeys(()),
        public_router=build_public_router(deps, return_url),
        on_start=[],
        on_stop=[],
    )
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="https://b.test")


async def offer_sign_in(deps: BrokerDeps, browser: httpx.AsyncClient, link_id: str = "l1") -> str:
    """Offers a sign-in and opens its start URL in the browser; returns the provider's state."""
    await handlers.when_link_requested_open_session(requested(link_id), deps)
    await handlers.when_link_reserved_offer_sign_in(reserved(link_id), deps)
    assert isinstance(deps.publisher, RecordingPublisher)
    offer = deps.publisher.events[-1]
    assert isinstance(offer, AuthorizationRequired)
    started = await browser.get(f"/v1/oauth/start/{start_token(offer)}")
    assert started.status_code == 303
    cookie = started.headers["set-cookie"].lower()
    assert "httponly" in cookie
    assert "secure" in cookie
    assert "samesite=lax" in cookie
    assert "domain" not in cookie
    return parse_qs(urlsplit(started.headers["location"]).query)["state"][0]


@pytest.fixture
async def browser(deps: BrokerDeps) -> AsyncIterator[httpx.AsyncClient]:
    async with await _browser(deps, None) as client:
        yield client


async def test_a_verified_sign_in_shows_the_connected_page(
    deps: BrokerDeps, browser: httpx.AsyncClient
) -> None:
    state = await offer_sign_in(deps, browser)
    page = await browser.get("/v1/oauth/callback", params={"state": state, "code": "c"})
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "Confirm the mailbox" in page.text
    assert "alice@gmail.com" in page.text
    assert "account acme, user u1" in page.text  # so a victim notices


async def test_the_start_url_twice_and_a_callback_in_another_browser_are_400_pages(
    deps: BrokerDeps, browser: httpx.AsyncClient
) -> None:
    state = await offer_sign_in(deps, browser)
    async with await _browser(deps, None) as other:
        page = await other.get("/v1/oauth/callback", params={"state": state, "error": "x"})
        assert page.status_code == 400
        assert 'data-code="not_bound"' in page.text
        assert "not started in this browser" in page.text
    assert isinstance(deps.publisher, RecordingPublisher)
    assert isinstance(deps.publisher.events[-1], AuthorizationRequired)


async def test_a_failed_sign_in_shows_the_reason_and_the_fix(
    deps: BrokerDeps, browser: httpx.AsyncClient
) -> None:
    state = await offer_sign_in(deps, browser)
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


@pytest.mark.parametrize(
    "too_long",
    [
        {"state": "s" * 513},
        {"code": "c" * 4097},
        {"error": "e" * 257},
        {"error_description": "d" * 1025},
    ],
)
async def test_an_overlong_callback_parameter_is_the_400_page_and_changes_nothing(
    deps: BrokerDeps, browser: httpx.AsyncClient, too_long: dict[str, str]
) -> None:
    state = await offer_sign_in(deps, browser)
    page = await browser.get("/v1/oauth/callback", params={"state": state, "code": "c", **too_long})
    assert page.status_code == 400
    assert page.headers["content-type"].startswith("text/html")
    assert 'data-code="malformed"' in page.text
    assert page.headers["cache-control"] == "no-store"
    # The sign-in was not used up: the genuine callback still completes.
    genuine = await browser.get("/v1/oauth/callback", params={"state": state, "code": "c"})
    assert genuine.status_code == 200
    assert 'data-result="verified"' in genuine.text


async def test_an_overlong_start_token_is_the_400_page(browser: httpx.AsyncClient) -> None:
    page = await browser.get(f"/v1/oauth/start/{'t' * 129}")
    assert page.status_code == 400
    assert page.headers["content-type"].startswith("text/html")
    assert 'data-code="malformed"' in page.text


async def test_a_return_url_gets_the_outcome_in_its_query(deps: BrokerDeps) -> None:
    async with await _browser(deps, RETURN_URL) as browser:
        state = await offer_sign_in(deps, browser)
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


async def test_a_verified_sign_in_returns_a_code_the_product_confirms(deps: BrokerDeps) -> None:
    async with await _browser(deps, RETURN_URL) as browser:
        state = await offer_sign_in(deps, browser)
        answer = await browser.get("/v1/oauth/callback", params={"state": state, "code": "c"})
        assert answer.status_code == 303
        query = parse_qs(urlsplit(answer.headers["location"]).query)
        assert query["result"] == ["verified"]
        assert None is await handlers.confirm_sign_in(
            MailboxOwner(account_id="acme", user_id="u1"), query["code"][0], deps
        )


# The product's key may confirm; link-api's (same MBL_SERVICE_KEYS) may not.
_KEYS = {"product": SecretStr("p" * 40), "link-api": SecretStr("l" * 40)}
_SCOPES = {"product": [CONFIRM_SCOPE]}
_CALLERS = CallerKeys(caller_keys(_KEYS, _SCOPES, {}))


def _broker_app(deps: BrokerDeps) -> FastAPI:
    """The broker's public pages and its confirm route, which only the product's key passes."""
    return build_http_app(
        title="broker under test",
        router=build_service_router(deps, _CALLERS.require(CONFIRM_SCOPE)),
        keys=_CALLERS,
        public_router=build_public_router(deps, RETURN_URL),
        on_start=[],
        on_stop=[],
    )


async def test_only_the_products_key_confirms_and_a_wrong_user_is_refused_clearly(
    deps: BrokerDeps,
) -> None:
    transport = httpx.ASGITransport(app=_broker_app(deps))
    async with httpx.AsyncClient(transport=transport, base_url="https://b.test") as browser:
        state = await offer_sign_in(deps, browser)
        answer = await browser.get("/v1/oauth/callback", params={"state": state, "code": "c"})
        code = parse_qs(urlsplit(answer.headers["location"]).query)["code"][0]
    async with httpx.AsyncClient(transport=transport, base_url="https://b.test") as backend:

        async def confirm(key: str, user: str) -> httpx.Response:
            return await backend.post(
                f"/v1/accounts/acme/users/{user}/sign-ins/confirm",
                json={"code": code},
                headers={"Authorization": f"Bearer {key}"},
            )

        assert (await confirm("l" * 40, "u1")).status_code == 403  # link-api: no scope
        other = await confirm("p" * 40, "u2")
        assert other.status_code == 403
        assert "account_id/user_id" in other.text
        assert isinstance(deps.publisher, RecordingPublisher)
        assert not any(isinstance(e, MailboxVerified) for e in deps.publisher.events)
        assert (await confirm("p" * 40, "u1")).status_code == 200
        again = await confirm("p" * 40, "u1")
        assert again.status_code == 400
        assert "code" in again.text
    assert sum(isinstance(e, MailboxVerified) for e in deps.publisher.events) == 1


@pytest.mark.parametrize(
    ("template", "status", "field"),
    [
        ('{{"code": "{code}", "code": "{code}"}}', 422, "code"),
        ('{{"code": "{code}\\ud800"}}', 422, "code"),
        ('{{"code": "{code}"}} trailing', 400, "body"),
        ('{{"code": "{code}", "n": ' + "9" * 5000 + "}}", 400, "body"),
    ],
)
async def test_a_confirmation_body_that_is_not_strictly_valid_confirms_nothing(
    deps: BrokerDeps, template: str, status: int, field: str
) -> None:
    transport = httpx.ASGITransport(app=_broker_app(deps))
    async with httpx.AsyncClient(transport=transport, base_url="https://b.test") as browser:
        state = await offer_sign_in(deps, browser)
        answer = await browser.get("/v1/oauth/callback", params={"state": state, "code": "c"})
        code = parse_qs(urlsplit(answer.headers["location"]).query)["code"][0]
        refused = await browser.post(
            "/v1/accounts/acme/users/u1/sign-ins/confirm",
            content=template.format(code=code).encode(),
            headers={"Authorization": f"Bearer {'p' * 40}", "Content-Type": "application/json"},
        )
    assert refused.status_code == status, refused.text
    assert [p["field"] for p in refused.json()["fields"]] == [field]
    assert isinstance(deps.publisher, RecordingPublisher)
    assert not any(isinstance(e, MailboxVerified) for e in deps.publisher.events)
