"""Helpers of the OAuth end-to-end tests: a person's browser on the local authorization
server, the product's confirmation, and the steps of a sign-in link (shared by the OAuth,
reconnect, refresh-trouble and OpenID provider tests)."""

import asyncio
import secrets
import ssl
import time
from typing import Any

import httpx

from localinfra import LocalOAuthServer
from localinfra.oauth_server import consent_form

from .conftest import TERMINAL, request_link, unique_user_id, wait_for_outcome

DOMAINS = {
    "google": "gmail.com",
    "microsoft": "outlook.com",
    "yahoo": "yahoo.com",
    "aol": "aol.com",
}


class Browser:
    """A person's browser: opens the sign-in URL, answers the consent page, follows redirects."""

    def __init__(self, ca_file: str) -> None:
        self._client = httpx.AsyncClient(
            verify=ssl.create_default_context(cafile=ca_file), timeout=15
        )

    async def __aenter__(self) -> "Browser":
        return self

    async def __aexit__(self, *_: object) -> None:
        await self._client.aclose()

    async def begin(self, start_url: str) -> str:
        """Opens the broker's start URL (binding this browser's cookie jar to the sign-in);
        returns the provider's authorization URL it redirects to."""
        started = await self._client.get(start_url)
        assert started.status_code == 303, started.text
        assert any(c.startswith("mbl_signin_") for c in self._client.cookies), "no binding"
        return started.headers["location"]

    async def consent(
        self,
        authorize_url: str,
        account: str,
        decision: str = "allow",
        uncheck: tuple[str, ...] = (),
    ) -> str:
        """Signs in as `account` and answers the consent page; returns where it redirects.
        A broker start URL is opened first (ADR 0014)."""
        if "/v1/oauth/start/" in authorize_url:
            authorize_url = await self.begin(authorize_url)
        page = await self._client.get(authorize_url)
        assert page.status_code == 200, page.text
        form = consent_form(page.text, account, decision, uncheck)
        answer = await self._client.post(authorize_url, data=form)
        assert answer.status_code in (302, 303), answer.text
        return answer.headers["location"]

    async def open(self, url: str) -> httpx.Response:
        """Visits a URL (the broker's callback) without following further redirects."""
        return await self._client.get(url)


async def confirm(
    api: httpx.AsyncClient,
    page: httpx.Response,
    account_id: str = "acme",
    user_id: str | None = None,
    link: dict[str, Any] | None = None,
) -> httpx.Response:
    """The product's backend redeems the callback's one-time code for the user signed in to
    the product (by default the link's requester), with the product's service key."""
    code = page.text.split('data-confirmation="')[1].split('"')[0]
    assert code, page.text
    broker = f"{page.url.scheme}://{page.url.netloc.decode()}"
    user = user_id or (final_owner(link) if link else "")
    return await api.post(
        f"{broker}/v1/accounts/{account_id}/users/{user}/sign-ins/confirm", json={"code": code}
    )


def new_account(oauth: LocalOAuthServer, provider: str, **modes: bool) -> str:
    address = f"{provider}-{secrets.token_hex(4)}@{DOMAINS[provider]}"
    oauth.add_user(provider, address, **modes)
    return address


async def wait_for_sign_in_url(
    api: httpx.AsyncClient, status_url: str, seconds: float = 20
) -> dict[str, Any]:
    """Polls a link until it shows the sign-in URL (or ends, which the caller asserts on)."""
    deadline = time.monotonic() + seconds
    while True:
        link: dict[str, Any] = (await api.get(status_url)).json()
        if link["status"] == "authorization_required" or link["status"] in TERMINAL:
            return link
        assert time.monotonic() < deadline, f"no sign-in URL after {seconds} s: {link}"
        await asyncio.sleep(0.05)


async def start_link(
    api: httpx.AsyncClient, address: str, account_id: str = "acme", user_id: str | None = None
) -> tuple[dict[str, Any], str]:
    """Requests an OAuth link and returns the link (showing its sign-in URL) and the URL."""
    body = {"email": address, "terms_accepted": True}
    accepted = await request_link(api, account_id, user_id or unique_user_id(), body)
    assert accepted["auth"] == "oauth"
    link = await wait_for_sign_in_url(api, accepted["status_url"])
    assert link["status"] == "authorization_required", link
    return link, link["authorization"]["url"]


async def link_through_sign_in(
    api: httpx.AsyncClient, browser: Browser, address: str, **consent: Any
) -> tuple[dict[str, Any], httpx.Response]:
    """Walks the whole flow; returns the link's final state and the callback page."""
    link, url = await start_link(api, address)
    callback = await browser.open(
        await browser.consent(url, consent.pop("account", address), **consent)
    )
    if 'data-result="verified"' in callback.text:
        assert (await confirm(api, callback, link=link)).status_code == 200
    final = await wait_for_outcome(api, link["status_url"])
    return final, callback


def final_owner(link: dict[str, Any]) -> str:
    return str(link["status_url"]).split("/users/")[1].split("/")[0]


async def wait_until(condition: Any, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not await condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)
