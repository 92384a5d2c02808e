"""OAuth troubles end to end, through all four services and the local authorization server:
an app whose id and secret need form-encoding, refresh failures that are not the user's
(retried with back-off, never flagging the mailbox), our app refused at sign-in
(deployment_misconfigured), tokens of failed sign-ins revoked, and overlong callback
parameters answered with the 400 page."""

import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pymongo import AsyncMongoClient

from localinfra import LocalOAuthServer
from localinfra.services import (
    OAUTH_PROVIDERS,
    RunningServices,
    ServiceConfig,
)
from localinfra.stack import Endpoints, LocalStack

from .conftest import caller, operator, running_services, service_config, wait_for_outcome
from .oauth_flow import (
    Browser,
    confirm,
    final_owner,
    link_through_sign_in,
    new_account,
    start_link,
    wait_until,
)

NAMESPACE = "e2e-oauth-troubles"


@pytest.fixture(scope="module")
def config(infra: Endpoints) -> ServiceConfig:
    # RFC 6749 2.3.1's awkward cases: ':' in the client id; '+', '%' and ':' in the secret.
    return service_config(
        infra,
        namespace=NAMESPACE,
        oauth_client_id=f"mailbox-link:{secrets.token_hex(4)}",
        oauth_client_secret=f"s3+cr%2Bt:{secrets.token_urlsafe(16)}",
        extra_env={
            "MBL_OAUTH_REFRESH_MARGIN_SECONDS": "30",
            "MBL_HOUSEKEEPING_INTERVAL_SECONDS": "0.5",
            # Back-off of 1 s doubling to 2 s: retries show within the test's patience.
            "MBL_OAUTH_REFRESH_RETRY_SECONDS": "1",
            "MBL_OAUTH_REFRESH_RETRY_MAX_SECONDS": "2",
        },
    )


@pytest.fixture(scope="module")
def app_secret(config: ServiceConfig) -> dict[str, str]:
    """The broker app's secret as both the broker and the server have it now (a test rotates
    it)."""
    return {"secret": config.oauth_client_secret}


@pytest.fixture(scope="module")
def troubled_services(
    config: ServiceConfig, workdir: Path, local_stack: LocalStack
) -> Iterator[RunningServices]:
    with running_services(config, workdir / NAMESPACE, local_stack.oauth_server) as running:
        yield running


@pytest.fixture
async def api(troubled_services: RunningServices) -> AsyncIterator[httpx.AsyncClient]:
    async with caller(troubled_services.api_url, troubled_services) as client:
        yield client


@pytest.fixture
async def registry(troubled_services: RunningServices) -> AsyncIterator[httpx.AsyncClient]:
    async with operator(troubled_services.registry_url, troubled_services) as client:
        yield client


@pytest.fixture
async def grants(infra: Endpoints) -> AsyncIterator[Any]:
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(infra.mongodb_uri, tz_aware=True)
    try:
        yield mongo[f"{NAMESPACE}-oauth-broker"]["grants"]
    finally:
        await mongo.close()


def broker_log(services: RunningServices) -> str:
    return services.logs["oauth_broker"].read_text(errors="replace")


async def mailbox_status(registry: httpx.AsyncClient, link: dict[str, Any]) -> str:
    listed = await registry.get(f"/v1/accounts/acme/users/{final_owner(link)}/mailboxes")
    [mailbox] = listed.json()["mailboxes"]
    return str(mailbox["status"])


async def test_an_app_whose_id_and_secret_need_form_encoding_links_with_basic_auth(
    api: httpx.AsyncClient, browser: Browser, oauth: LocalOAuthServer
) -> None:
    before = len(oauth.client_auth_methods)
    for provider in ("google", "microsoft"):
        final, _ = await link_through_sign_in(api, browser, new_account(oauth, provider))
        assert final["status"] == "linked", final
    # The local server publishes both methods; basic comes first in its list.
    assert set(oauth.client_auth_methods[before:]) == {"client_secret_basic"}


async def test_a_rotated_client_secret_is_retried_without_flagging_and_works_once_fixed(
    api: httpx.AsyncClient,
    registry: httpx.AsyncClient,
    browser: Browser,
    oauth: LocalOAuthServer,
    grants: Any,
    config: ServiceConfig,
    app_secret: dict[str, str],
    troubled_services: RunningServices,
) -> None:
    address = new_account(oauth, "google")
    oauth.access_token_lifetime = 20  # inside the 30 s margin: refreshed every round
    try:
        final, _ = await link_through_sign_in(api, browser, address)
        assert final["status"] == "linked", final
        # The operators rotate the secret at the provider; the broker still has the old one.
        new_secret = f"n+w%3A:{secrets.token_urlsafe(16)}"
        callback = f"{troubled_services.broker_url}/v1/oauth/callback"
        oauth.register_client(config.oauth_client_id, new_secret, [callback])

        async def retried_twice() -> bool:
            grant = await grants.find_one({"address": address})
            return bool(grant and (grant.get("refresh_failures") or 0) >= 2)

        await wait_until(retried_twice, seconds=30)
        grant = await grants.find_one({"address": address})
        assert grant["status"] == "active"
        assert grant["last_refresh_error"] == "invalid_client"
        assert grant["retry_at"] is not None
        assert await mailbox_status(registry, final) == "active"  # never flagged
        log = broker_log(troubled_services)
        assert "WARNING" in log
        assert "invalid_client" in log
        assert "to retry" in log  # the housekeeping summary counts retries apart

        # The fix: the broker restarted with the new secret; the next retry refreshes.
        issued = len(oauth.issued_tokens(address, "access_token"))
        secret_env = {f"MBL_OAUTH_{p.upper()}__CLIENT_SECRET": new_secret for p in OAUTH_PROVIDERS}
        troubled_services.restart("oauth_broker", env=secret_env)
        app_secret["secret"] = new_secret

        async def fresh_again() -> bool:
            grant = await grants.find_one({"address": address})
            refreshed = len(oauth.issued_tokens(address, "access_token")) > issued
            return bool(refreshed and grant and grant.get("refresh_failures") == 0)

        await wait_until(fresh_again, seconds=30)
        assert await mailbox_status(registry, final) == "active"
    finally:
        oauth.access_token_lifetime = 3600


async def test_a_token_endpoint_outage_is_retried_without_flagging(
    api: httpx.AsyncClient,
    registry: httpx.AsyncClient,
    browser: Browser,
    oauth: LocalOAuthServer,
    grants: Any,
) -> None:
    address = new_account(oauth, "yahoo")
    oauth.access_token_lifetime = 20
    try:
        final, _ = await link_through_sign_in(api, browser, address)
        assert final["status"] == "linked", final
        oauth.token_outage("yahoo", 503, "temporarily_unavailable")
        try:

            async def retried() -> bool:
                grant = await grants.find_one({"address": address})
                return bool(grant and grant.get("last_refresh_error") == "temporarily_unavailable")

            await wait_until(retried, seconds=30)
        finally:
            oauth.end_token_outage("yahoo")
        issued = len(oauth.issued_tokens(address, "access_token"))

        async def fresh_again() -> bool:
            grant = await grants.find_one({"address": address})
            refreshed = len(oauth.issued_tokens(address, "access_token")) > issued
            return bool(refreshed and grant and grant.get("refresh_failures") == 0)

        await wait_until(fresh_again, seconds=30)
        assert await mailbox_status(registry, final) == "active"
    finally:
        oauth.access_token_lifetime = 3600


async def test_our_app_refused_at_sign_in_fails_with_deployment_misconfigured(
    api: httpx.AsyncClient,
    browser: Browser,
    oauth: LocalOAuthServer,
    config: ServiceConfig,
    app_secret: dict[str, str],
    troubled_services: RunningServices,
) -> None:
    address = new_account(oauth, "google")
    link, url = await start_link(api, address)
    redirect = await browser.consent(url, address)
    # The provider no longer takes the broker's secret: the code exchange is invalid_client.
    callback = f"{troubled_services.broker_url}/v1/oauth/callback"
    oauth.register_client(config.oauth_client_id, "not-the-secret", [callback])
    try:
        page = await browser.open(redirect)
    finally:
        oauth.register_client(config.oauth_client_id, app_secret["secret"], [callback])
    assert page.status_code == 200
    assert 'data-code="deployment_misconfigured"' in page.text
    assert "misconfigured" in page.text
    assert "few minutes" not in page.text
    final = await wait_for_outcome(api, link["status_url"])
    assert final["failure"]["code"] == "deployment_misconfigured", final
    log = broker_log(troubled_services)
    assert "ERROR" in log
    assert "refused our app's credentials" in log
    assert app_secret["secret"] not in log


@pytest.mark.parametrize("mode", ["account_mismatch", "no_refresh_token"])
async def test_a_failed_sign_in_revokes_what_it_obtained(
    api: httpx.AsyncClient, browser: Browser, oauth: LocalOAuthServer, mode: str
) -> None:
    address = new_account(oauth, "google")
    if mode == "account_mismatch":
        signed_in = new_account(oauth, "google")  # someone else's Google account
    else:
        signed_in = address
        oauth.add_user("google", address, no_refresh_token=True)
    final, page = await link_through_sign_in(api, browser, address, account=signed_in)
    assert final["failure"]["code"] == mode, final
    assert f'data-code="{mode}"' in page.text
    # Google revokes the whole grant whichever token is sent: every token is revoked.
    obtained = oauth.issued_tokens(signed_in)
    assert obtained
    assert all(oauth.was_revoked(token) for token in obtained)


async def test_an_overlong_state_gets_the_400_page(
    api: httpx.AsyncClient, browser: Browser, oauth: LocalOAuthServer
) -> None:
    address = new_account(oauth, "google")
    link, url = await start_link(api, address)
    redirect = await browser.consent(url, address)
    callback, query = redirect.split("?", 1)
    page = await browser.open(f"{callback}?state={'s' * 600}&code=c")
    assert page.status_code == 400
    assert page.headers["content-type"].startswith("text/html")
    assert 'data-code="malformed"' in page.text
    # Nothing changed: the real callback still verifies the mailbox.
    verified = await browser.open(f"{callback}?{query}")
    assert 'data-result="verified"' in verified.text
    assert (await confirm(api, verified, link=link)).status_code == 200
    assert (await wait_for_outcome(api, link["status_url"]))["status"] == "linked"
