"""OAuth links end to end: link-api, the registry, the OAuth broker and a browser walking the
local authorization server's sign-in, on real Kafka, FerretDB and the OAuth Dovecot."""

import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from pymongo import AsyncMongoClient

from localinfra import LocalOAuthServer
from localinfra.services import RunningServices
from localinfra.stack import Endpoints, LocalStack

from .conftest import (
    caller,
    operator,
    request_link,
    running_services,
    service_config,
    unique_user_id,
    wait_for_outcome,
)
from .oauth_flow import (
    Browser,
    confirm,
    final_owner,
    link_through_sign_in,
    new_account,
    start_link,
    wait_until,
)
from .probes import dump_databases, read_topics

NAMESPACE = "e2e-oauth"
SESSION_TTL_SECONDS = 10
GMAIL_SCOPE = "https://mail.google.com/"


@pytest.fixture(scope="module")
def oauth_services(
    infra: Endpoints, workdir: Path, local_stack: LocalStack
) -> Iterator[RunningServices]:
    # Short sign-in sessions and a fast timer, so expiry and refresh show within seconds.
    config = service_config(
        infra,
        namespace=NAMESPACE,
        extra_env={
            "MBL_OAUTH_SESSION_TTL_SECONDS": str(SESSION_TTL_SECONDS),
            "MBL_OAUTH_REFRESH_MARGIN_SECONDS": "30",
            "MBL_HOUSEKEEPING_INTERVAL_SECONDS": "0.5",
        },
    )
    with running_services(config, workdir / NAMESPACE, local_stack.oauth_server) as running:
        yield running


@pytest.fixture
async def api(oauth_services: RunningServices) -> AsyncIterator[httpx.AsyncClient]:
    async with caller(oauth_services.api_url, oauth_services) as client:
        yield client


@pytest.fixture
async def registry(oauth_services: RunningServices) -> AsyncIterator[httpx.AsyncClient]:
    async with operator(oauth_services.registry_url, oauth_services) as client:
        yield client


# --- the happy paths --------------------------------------------------------------------------


@pytest.mark.parametrize("provider", ["google", "microsoft", "yahoo", "aol"])
async def test_a_mailbox_links_through_its_providers_sign_in(
    provider: str,
    api: httpx.AsyncClient,
    registry: httpx.AsyncClient,
    browser: Browser,
    oauth: LocalOAuthServer,
    oauth_services: RunningServices,
) -> None:
    address = new_account(oauth, provider)
    link, start = await start_link(api, address)
    assert link["provider"] == provider
    assert start.startswith(f"{oauth_services.broker_url}/v1/oauth/start/")
    assert "state=" not in start  # the state never leaves the broker (ADR 0014)
    url = await browser.begin(start)
    state = parse_qs(urlsplit(url).query)["state"][0]

    redirect = await browser.consent(url, address)
    assert redirect.startswith(f"{oauth_services.broker_url}/v1/oauth/callback?")
    page = await browser.open(redirect)
    assert page.status_code == 200
    assert 'data-result="verified"' in page.text
    assert "acme" in page.text  # names the product account being linked
    assert (await confirm(api, page, link=link)).status_code == 200

    final = await wait_for_outcome(api, link["status_url"])
    assert final["status"] == "linked", final
    assert final["authorization"] is None
    sent = oauth.last_authorize_params(state)
    assert sent["code_challenge_method"] == "S256"
    assert sent["login_hint"] == address
    assert sent["prompt"]
    assert sent["nonce"]
    listed = await registry.get(f"/v1/accounts/acme/users/{final_owner(final)}/mailboxes")
    [mailbox] = listed.json()["mailboxes"]
    assert (mailbox["email"], mailbox["auth"], mailbox["status"]) == (address, "oauth", "active")
    assert mailbox["authority"] == "provider"  # recorded by the registry


# --- the errors users hit ---------------------------------------------------------------------


async def test_pressing_cancel_fails_with_consent_denied(
    api: httpx.AsyncClient, browser: Browser, oauth: LocalOAuthServer
) -> None:
    address = new_account(oauth, "google")
    final, page = await link_through_sign_in(api, browser, address, decision="deny")
    assert final["failure"]["code"] == "consent_denied"
    assert 'data-code="consent_denied"' in page.text


async def test_signing_in_as_another_account_fails_with_account_mismatch(
    api: httpx.AsyncClient, browser: Browser, oauth: LocalOAuthServer
) -> None:
    # How a Google Group or an alias shows up: the person signs in as their own mailbox.
    group = f"sales-{secrets.token_hex(4)}@gmail.com"
    member = new_account(oauth, "google")
    final, _ = await link_through_sign_in(api, browser, group, account=member)
    assert final["failure"]["code"] == "account_mismatch"
    assert "group or an alias" in final["failure"]["remediation"]
    assert member in final["failure"]["detail"]


@pytest.mark.parametrize(
    ("provider", "mode", "code"),
    [
        ("google", "gmail_disabled", "gmail_disabled"),
        ("microsoft", "imap_disabled", "imap_disabled"),
        ("google", "no_refresh_token", "no_refresh_token"),
        ("yahoo", "token_error", "provider_error"),
    ],
)
async def test_provider_side_refusals_fail_with_their_code(
    provider: str,
    mode: str,
    code: str,
    api: httpx.AsyncClient,
    browser: Browser,
    oauth: LocalOAuthServer,
) -> None:
    address = new_account(oauth, provider, **{mode: True})
    final, page = await link_through_sign_in(api, browser, address)
    assert final["status"] == "failed"
    assert final["failure"]["code"] == code, final
    assert final["failure"]["message"]
    assert final["failure"]["remediation"]
    assert f'data-code="{code}"' in page.text


async def test_unchecking_the_mail_permission_fails_with_scope_missing(
    api: httpx.AsyncClient, browser: Browser, oauth: LocalOAuthServer
) -> None:
    address = new_account(oauth, "google")
    final, _ = await link_through_sign_in(api, browser, address, uncheck=(GMAIL_SCOPE,))
    assert final["failure"]["code"] == "scope_missing"
    assert GMAIL_SCOPE in final["failure"]["detail"]


async def test_a_sign_in_not_finished_in_time_fails_with_session_expired(
    api: httpx.AsyncClient, browser: Browser, oauth: LocalOAuthServer
) -> None:
    address = new_account(oauth, "microsoft")
    link, url = await start_link(api, address)
    final = await wait_for_outcome(api, link["status_url"], seconds=SESSION_TTL_SECONDS + 20)
    assert final["failure"]["code"] == "session_expired"
    # The user comes back late: nothing changes, and the page says why.
    late = await browser.open(url)
    assert late.status_code == 400
    assert 'data-code="session_expired"' in late.text
    assert (await api.get(link["status_url"])).json()["status"] == "failed"


# --- tampering, replay, and the registry first ------------------------------------------------


async def test_forged_and_replayed_callbacks_change_nothing(
    api: httpx.AsyncClient, browser: Browser, oauth: LocalOAuthServer
) -> None:
    address = new_account(oauth, "google")
    link, url = await start_link(api, address)
    redirect = await browser.consent(url, address)
    query = parse_qs(urlsplit(redirect).query)
    # The start URL works once.
    assert 'data-code="start_used"' in (await browser.open(url)).text
    base = redirect.split("?")[0]

    forged = await browser.open(f"{base}?state={secrets.token_urlsafe(32)}&code={query['code'][0]}")
    assert forged.status_code == 400
    assert 'data-code="unknown_state"' in forged.text
    missing = await browser.open(f"{base}?code={query['code'][0]}")
    assert missing.status_code == 400
    assert (await api.get(link["status_url"])).json()["status"] == "authorization_required"

    verified = await browser.open(redirect)
    assert verified.status_code == 200
    replayed = await browser.open(redirect)
    assert replayed.status_code == 400
    assert 'data-code="state_used"' in replayed.text
    assert (await confirm(api, verified, link=link)).status_code == 200
    final = await wait_for_outcome(api, link["status_url"])
    assert final["status"] == "linked"


async def test_a_victim_signing_in_through_the_attackers_link_links_nothing(
    api: httpx.AsyncClient, infra: Endpoints, oauth: LocalOAuthServer
) -> None:
    # The attacker (the requester) asks to link the victim's mailbox, opens the start URL
    # himself (so his browser is bound) and sends the victim the provider URL.
    victim_address = new_account(oauth, "google")
    link, start = await start_link(api, victim_address)
    async with Browser(infra.ca_file) as attacker, Browser(infra.ca_file) as victim:
        provider_url = await attacker.begin(start)
        # The victim signs in at the provider and lands on the callback without the cookie.
        landed = await victim.open(await victim.consent(provider_url, victim_address))
        assert landed.status_code == 400
        assert 'data-code="not_bound"' in landed.text
        # The start URL, now used, does not bind the victim either.
        again = await victim.open(start)
        assert again.status_code == 400
        assert 'data-code="start_used"' in again.text
    assert (await api.get(link["status_url"])).json()["status"] == "authorization_required"


async def test_a_victim_who_opens_an_unused_start_url_cannot_be_confirmed_for_the_requester(
    api: httpx.AsyncClient, infra: Endpoints, oauth: LocalOAuthServer
) -> None:
    # The victim opens the attacker's start URL and signs in: the code lands in the victim's
    # browser, and the product confirms it only for the user signed in there (the victim).
    victim_address = new_account(oauth, "google")
    link, start = await start_link(api, victim_address)
    async with Browser(infra.ca_file) as victim:
        page = await victim.open(await victim.consent(start, victim_address))
        assert 'data-result="verified"' in page.text
        refused = await confirm(api, page, user_id=unique_user_id())
        assert refused.status_code == 403, refused.text
        assert "account_id/user_id" in refused.text
    assert (await api.get(link["status_url"])).json()["status"] == "authorization_required"


async def test_a_forged_access_denied_without_the_binding_ends_nothing(
    api: httpx.AsyncClient, infra: Endpoints, oauth: LocalOAuthServer
) -> None:
    address = new_account(oauth, "google")
    link, start = await start_link(api, address)
    async with Browser(infra.ca_file) as owner, Browser(infra.ca_file) as forger:
        provider_url = await owner.begin(start)
        state = parse_qs(urlsplit(provider_url).query)["state"][0]
        callback = f"{start.split('/v1/oauth/start/')[0]}/v1/oauth/callback"
        forged = await forger.open(f"{callback}?state={state}&error=access_denied")
        assert forged.status_code == 400
        assert 'data-code="not_bound"' in forged.text
        assert (await api.get(link["status_url"])).json()["status"] == "authorization_required"
        # The real sign-in still completes.
        page = await owner.open(await owner.consent(provider_url, address))
        assert 'data-result="verified"' in page.text
        assert (await confirm(api, page, link=link)).status_code == 200
    final = await wait_for_outcome(api, link["status_url"])
    assert final["status"] == "linked", final


async def test_a_request_the_registry_rejects_never_shows_a_sign_in_url(
    api: httpx.AsyncClient,
    registry: httpx.AsyncClient,
    browser: Browser,
    oauth: LocalOAuthServer,
    infra: Endpoints,
) -> None:
    user_id = unique_user_id()
    plan = await registry.put(f"/v1/accounts/acme/users/{user_id}/plan", json={"plan": "free"})
    assert plan.status_code == 200, plan.text
    link, url = await start_link(api, new_account(oauth, "google"), user_id=user_id)
    page = await browser.open(await browser.consent(url, link["email"]))
    assert (await confirm(api, page, link=link)).status_code == 200
    assert (await wait_for_outcome(api, link["status_url"]))["status"] == "linked"
    # The free plan's one mailbox is used: the next request is refused before any sign-in.
    accepted = await request_link(
        api, "acme", user_id, {"email": new_account(oauth, "google"), "terms_accepted": True}
    )
    second = await wait_for_outcome(api, accepted["status_url"])
    assert second["failure"]["code"] == "plan_limit_reached", second
    records = await read_topics(infra.kafka_bootstrap, NAMESPACE)
    offers = [v for t, _, v in records if t.endswith("authorizations.v1")]
    assert any(link["link_id"].encode() in v for v in offers)
    assert not [v for v in offers if second["link_id"].encode() in v]


async def test_another_account_learns_the_mailbox_is_taken_only_after_signing_in(
    api: httpx.AsyncClient, browser: Browser, oauth: LocalOAuthServer
) -> None:
    address = new_account(oauth, "google")
    first, _ = await link_through_sign_in(api, browser, address)
    assert first["status"] == "linked"
    # Nothing is revealed before control is proven: the other account is offered the sign-in.
    link, url = await start_link(api, address, account_id="globex")
    page = await browser.open(await browser.consent(url, address))
    assert 'data-result="verified"' in page.text, page.text
    assert (await confirm(api, page, account_id="globex", link=link)).status_code == 200
    final = await wait_for_outcome(api, link["status_url"])
    assert final["failure"]["code"] == "already_linked_elsewhere", final


async def test_an_unattended_sign_in_does_not_delay_another_accounts_link(
    api: httpx.AsyncClient, browser: Browser, oauth: LocalOAuthServer
) -> None:
    address = new_account(oauth, "google")
    squatter, _ = await start_link(api, address, account_id="globex")  # nobody signs in
    owner, _ = await link_through_sign_in(api, browser, address)
    assert owner["status"] == "linked", owner
    # The unattended request held nothing: it is still waiting for its sign-in.
    assert (await api.get(squatter["status_url"])).json()["status"] == "authorization_required"


# --- tokens: refresh, reconnect, revocation, secrecy ------------------------------------------


async def test_tokens_are_refreshed_and_a_refusal_for_good_asks_to_reconnect(
    api: httpx.AsyncClient,
    registry: httpx.AsyncClient,
    browser: Browser,
    oauth: LocalOAuthServer,
) -> None:
    address = new_account(oauth, "google")
    # Inside the broker's 30 s refresh margin: every housekeeping round refreshes it.
    oauth.access_token_lifetime = 20
    try:
        final, _ = await link_through_sign_in(api, browser, address)
        assert final["status"] == "linked"
        mailboxes = f"/v1/accounts/acme/users/{final_owner(final)}/mailboxes"
        signed_in = len(oauth.issued_tokens(address, "access_token"))

        async def refreshed() -> bool:
            return len(oauth.issued_tokens(address, "access_token")) > signed_in

        await wait_until(refreshed)

        async def reconnect_required() -> bool:
            [mailbox] = (await registry.get(mailboxes)).json()["mailboxes"]
            return bool(mailbox["status"] == "reconnect_required")

        assert not await reconnect_required()
        oauth.revoke_refresh_tokens("google", address)  # the user removed our app
        await wait_until(reconnect_required)
    finally:
        oauth.access_token_lifetime = 3600


async def test_unlinking_revokes_the_tokens_at_the_provider_and_deletes_them(
    api: httpx.AsyncClient,
    registry: httpx.AsyncClient,
    browser: Browser,
    oauth: LocalOAuthServer,
    infra: Endpoints,
) -> None:
    address = new_account(oauth, "google")
    final, _ = await link_through_sign_in(api, browser, address)
    [refresh_token] = oauth.issued_tokens(address, "refresh_token")
    owner = final_owner(final)
    response = await registry.delete(f"/v1/accounts/acme/users/{owner}/mailboxes/{address}")
    assert response.status_code == 204

    async def revoked() -> bool:
        return oauth.was_revoked(refresh_token)

    await wait_until(revoked)
    # Deleted everywhere: the broker's grant (just after revoking), and the registry's copy
    # from the verification (when it unlinked).
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(infra.mongodb_uri)
    try:
        grants = mongo[f"{NAMESPACE}-oauth-broker"]["grants"]

        async def grant_deleted() -> bool:
            return await grants.find_one({"address": address}) is None

        await wait_until(grant_deleted)
        registry_db = mongo[f"{NAMESPACE}-registry"]

        async def noted_unlinked() -> bool:  # the link's progress, noted after its decision
            record = await registry_db["links"].find_one({"address": address})
            return record is not None and record["state"] == "unlinked"

        await wait_until(noted_unlinked)
        record = await registry_db["links"].find_one({"address": address})
        assert record is not None
        assert await registry_db["verifications"].find_one({"_id": record["_id"]}) is None
    finally:
        await mongo.close()


async def test_no_token_appears_in_plaintext_in_topics_documents_or_logs(
    api: httpx.AsyncClient,
    browser: Browser,
    oauth: LocalOAuthServer,
    infra: Endpoints,
    workdir: Path,
) -> None:
    address = new_account(oauth, "google")
    final, _ = await link_through_sign_in(api, browser, address)
    assert final["status"] == "linked"
    tokens = [t.encode() for t in oauth.issued_tokens(address)]
    assert len(tokens) >= 2
    records = await read_topics(infra.kafka_bootstrap, NAMESPACE)
    documents = await dump_databases(infra.mongodb_uri, NAMESPACE)
    logs = [p.read_bytes() for p in (workdir / NAMESPACE).rglob("*.log")]
    assert records
    assert documents
    assert logs
    for token in tokens:
        assert not [r for r in records if token in r[1] or token in r[2]], "token in Kafka"
        assert not [d for d in documents if token in d], "token in MongoDB"
        assert not [log for log in logs if token in log], "token in a log"


# --- a link the registry ends while the user is signing in ------------------------------------


@pytest.fixture(scope="module")
def expiring_services(
    infra: Endpoints, workdir: Path, local_stack: LocalStack
) -> Iterator[RunningServices]:
    # The registry gives up on reservations after 3 s, long before the sign-in expires.
    namespace = "e2e-oauth-expiring"
    config = service_config(
        infra,
        namespace=namespace,
        extra_env={"MBL_RESERVATION_TTL_SECONDS": "3", "MBL_HOUSEKEEPING_INTERVAL_SECONDS": "0.5"},
    )
    modules = ("registry", "oauth_broker", "link_api")
    with running_services(
        config, workdir / namespace, local_stack.oauth_server, modules
    ) as running:
        yield running


async def test_a_callback_for_a_link_the_registry_ended_gets_a_400(
    expiring_services: RunningServices, browser: Browser, oauth: LocalOAuthServer
) -> None:
    async with caller(expiring_services.api_url, expiring_services) as api:
        address = new_account(oauth, "google")
        link, url = await start_link(api, address)
        final = await wait_for_outcome(api, link["status_url"])
        assert final["failure"]["code"] == "reservation_expired"
        page = await browser.open(url)  # the start URL of an ended link changes nothing
        assert page.status_code == 400
        assert 'data-code="link_ended"' in page.text
        assert (await api.get(link["status_url"])).json()["status"] == "failed"
