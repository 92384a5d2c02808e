"""A generic OpenID Connect mailbox end to end, against an independent provider.

The provider is panva's oidc-provider from npm (OpenID Certified; localinfra/oidc_idp.py), its
mailboxes on a Dovecot whose oauth2 passdb introspects the provider's tokens. The operator
configures it as the generic provider "corp" (MBL_OIDC_PROVIDERS, deploy/local/README.md) with a
client secret containing `+`, `%` and `:`, so every request to the token and revocation
endpoints proves the client authentication is form-encoded (RFC 6749 §2.3.1). Through all four
services on real Kafka and FerretDB: a full link, refresh, the grant revoked at the provider
(reconnect_required), reconnect in place (MailboxReconnected, same mailbox_id), and unlink with
revocation at the provider.
"""

import base64
import json
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import httpx
import pytest

from localinfra.oidc_idp import OidcIdp, OidcIdpSetup, awkward_secret, sign_in
from localinfra.ports import free_port
from localinfra.services import (
    RunningServices,
    oauth_redirect_uri,
    oidc_provider_environment,
    start_services,
)
from localinfra.stack import Endpoints

from .conftest import caller, operator, request_link, service_config, unique_user_id
from .conftest import wait_for_outcome as wait_for_link_outcome
from .oauth_flow import confirm, wait_for_sign_in_url, wait_until
from .probes import dump_databases, events_about, read_topics

NAMESPACE = "e2e-oidc"
PROVIDER = "corp"
DOMAIN = "corp.test"
CLIENT_ID = "mailbox-link"
# The broker refreshes this long before expiry; the provider's short-lived tokens fall inside.
REFRESH_MARGIN_SECONDS = 30
SHORT_TOKEN_LIFETIME = REFRESH_MARGIN_SECONDS + 5


@dataclass(frozen=True)
class Corp:
    """The operator's generic OIDC provider as the services see it."""

    idp: OidcIdp
    client_secret: str
    services: RunningServices
    mail_log: Path  # the Dovecot that accepts the provider's tokens


@pytest.fixture(scope="module")
def corp(infra: Endpoints, workdir: Path, oidc_idp: OidcIdpSetup) -> Iterator[Corp]:
    broker_port = free_port()
    secret = awkward_secret()
    # The operator registers the app at the provider: its callback and the awkward secret.
    oidc_idp.idp.register_client(CLIENT_ID, secret, [oauth_redirect_uri(broker_port)])
    config = service_config(
        infra,
        namespace=NAMESPACE,
        broker_port=broker_port,
        extra_env={
            **oidc_provider_environment(PROVIDER, oidc_idp, CLIENT_ID, secret, [DOMAIN]),
            "MBL_OAUTH_REFRESH_MARGIN_SECONDS": str(REFRESH_MARGIN_SECONDS),
            "MBL_HOUSEKEEPING_INTERVAL_SECONDS": "0.5",
        },
    )
    running = start_services(config, workdir / NAMESPACE)
    try:
        yield Corp(oidc_idp.idp, secret, running, oidc_idp.mail_log)
    finally:
        running.stop()


@pytest.fixture
async def api(corp: Corp) -> AsyncIterator[httpx.AsyncClient]:
    async with caller(corp.services.api_url, corp.services) as client:
        yield client


@pytest.fixture
async def registry(corp: Corp) -> AsyncIterator[httpx.AsyncClient]:
    async with operator(corp.services.registry_url, corp.services) as client:
        yield client


def new_account(idp: OidcIdp) -> tuple[str, str]:
    """An account at the provider: its address (the mailbox) and its subject id."""
    address = f"ann-{secrets.token_hex(4)}@{DOMAIN}"
    return address, idp.add_account(address)


async def link_by_signing_in(
    api: httpx.AsyncClient, corp: Corp, address: str, user_id: str, *, named: bool = False
) -> tuple[dict[str, Any], str]:
    """The owner asks to link `address` (detection finds "corp" by its domain, or the request
    names it when `named`), signs in at the provider in a fresh browser and the product
    confirms; returns the final link and the callback URL the provider redirected to."""
    body: dict[str, Any] = {"email": address, "terms_accepted": True}
    if named:
        body |= {"provider": "oidc", "oidc_provider": PROVIDER}
    accepted = await request_link(api, "acme", user_id, body)
    link = await wait_for_sign_in_url(api, accepted["status_url"])
    assert link["status"] == "authorization_required", link
    assert link["provider"] == "oidc", link
    start = link["authorization"]["url"]
    assert start.startswith(f"{corp.services.broker_url}/v1/oauth/start/")
    callback_prefix = f"{corp.services.broker_url}/v1/oauth/callback"
    async with httpx.AsyncClient(timeout=15) as browser:
        # From the broker's start URL (its binding cookie) through the provider's login and
        # consent pages, back to the broker's callback.
        callback = await sign_in(browser, start, address, stop_at=callback_prefix)
        page = await browser.get(callback)
    assert page.status_code == 200, page.text
    assert 'data-result="verified"' in page.text, page.text
    assert (await confirm(api, page, user_id=user_id)).status_code == 200
    return await wait_for_link_outcome(api, link["status_url"]), callback


async def mailbox_of(registry: httpx.AsyncClient, user_id: str) -> dict[str, Any]:
    listed = await registry.get(f"/v1/accounts/acme/users/{user_id}/mailboxes")
    assert listed.status_code == 200, listed.text
    [mailbox] = listed.json()["mailboxes"]
    result: dict[str, Any] = mailbox
    return result


async def events_of(infra: Endpoints, address: str) -> list[dict[str, Any]]:
    """The events keyed by the address, decoded, oldest first, each once (delivery is at least
    once: a re-published event keeps its event_id)."""
    records = await events_about(infra.kafka_bootstrap, NAMESPACE, address)
    events = [json.loads(value) for _, value in records]
    return list({event["event_id"]: event for event in events}.values())


async def test_a_generic_oidc_mailbox_links_through_the_independent_provider(
    api: httpx.AsyncClient, registry: httpx.AsyncClient, corp: Corp, infra: Endpoints
) -> None:
    assert all(c in corp.client_secret for c in "+%:")
    address, sub = new_account(corp.idp)
    user_id = unique_user_id()
    final, callback = await link_by_signing_in(api, corp, address, user_id)
    assert final["status"] == "linked", final
    assert httpx.URL(callback).params["iss"] == corp.idp.issuer  # RFC 9207, checked by the broker
    mailbox = await mailbox_of(registry, user_id)
    assert (mailbox["email"], mailbox["auth"], mailbox["status"]) == (address, "oauth", "active")
    assert mailbox["provider"] == "oidc"
    # The code was redeemed with the secret: the provider issued both tokens to our client.
    issued = {(e.kind, e.client_id) for e in corp.idp.issued(sub)}
    assert issued == {("access_token", CLIENT_ID), ("refresh_token", CLIENT_ID)}
    # The broker's mailbox check logged in with the provider's token over XOAUTH2.
    assert f"Login: user=<{address}>, method=XOAUTH2" in corp.mail_log.read_text()
    [linked] = [e for e in await events_of(infra, address) if e["type"] == "MailboxLinked"]
    assert (linked["data"]["provider"], linked["data"]["oidc_provider"]) == ("oidc", PROVIDER)


async def test_refresh_then_a_grant_revoked_at_the_provider_asks_to_reconnect_in_place(
    api: httpx.AsyncClient, registry: httpx.AsyncClient, corp: Corp, infra: Endpoints
) -> None:
    address, sub = new_account(corp.idp)
    user_id = unique_user_id()
    # Access tokens that expire inside the broker's refresh margin: it refreshes them.
    corp.idp.set_access_token_ttl(SHORT_TOKEN_LIFETIME)
    try:
        final, _ = await link_by_signing_in(api, corp, address, user_id)
        assert final["status"] == "linked", final
        mailbox_id = final["mailbox_id"]
        signed_in = len([e for e in corp.idp.issued(sub) if e.kind == "access_token"])

        async def refreshed() -> bool:
            issued = [e for e in corp.idp.issued(sub) if e.kind == "access_token"]
            return len(issued) > signed_in

        await wait_until(refreshed, seconds=60)
        assert (await mailbox_of(registry, user_id))["status"] == "active"

        # The user removes our app at the provider: the next refresh gets invalid_grant.
        assert corp.idp.revoke_grants(address) == 1

        async def reconnect_required() -> bool:
            return bool((await mailbox_of(registry, user_id))["status"] == "reconnect_required")

        await wait_until(reconnect_required, seconds=60)
    finally:
        corp.idp.set_access_token_ttl(3600)

    # The owner links it again: a sign-in, and the same mailbox works again (contract 1.5.0).
    again, _ = await link_by_signing_in(api, corp, address, user_id)
    assert again["status"] == "linked", again
    assert again["mailbox_id"] == mailbox_id
    mailbox = await mailbox_of(registry, user_id)
    assert (mailbox["mailbox_id"], mailbox["status"]) == (mailbox_id, "active")
    events = await events_of(infra, address)
    [reconnected] = [e for e in events if e["type"] == "MailboxReconnected"]
    assert reconnected["data"]["mailbox_id"] == mailbox_id
    assert reconnected["data"]["oidc_provider"] == PROVIDER
    assert [e["type"] for e in events].count("MailboxLinked") == 1


async def test_unlinking_revokes_the_grant_at_the_provider(
    api: httpx.AsyncClient, registry: httpx.AsyncClient, corp: Corp
) -> None:
    address, sub = new_account(corp.idp)
    user_id = unique_user_id()
    final, _ = await link_by_signing_in(api, corp, address, user_id, named=True)
    assert final["status"] == "linked", final
    response = await registry.delete(f"/v1/accounts/acme/users/{user_id}/mailboxes/{address}")
    assert response.status_code == 204, response.text

    async def revoked_at_the_provider() -> bool:
        # The broker revoked the refresh token at the revocation endpoint, authenticated with
        # the secret; the provider ended the grant with it.
        return any(
            (e.kind, e.via, e.client_id) == ("grant", "revocation", CLIENT_ID)
            for e in corp.idp.revocations(sub)
        )

    await wait_until(revoked_at_the_provider, seconds=30)


async def test_the_client_secret_appears_in_no_topic_document_or_log_in_any_encoding(
    api: httpx.AsyncClient, corp: Corp, infra: Endpoints, workdir: Path
) -> None:
    address, _ = new_account(corp.idp)
    final, _ = await link_by_signing_in(api, corp, address, unique_user_id())
    assert final["status"] == "linked", final
    secret = corp.client_secret
    form = quote_plus(secret)  # as in client_secret_post, and inside Basic
    basic = base64.b64encode(f"{quote_plus(CLIENT_ID)}:{form}".encode())
    encodings = [secret.encode(), form.encode(), basic, json.dumps(secret).encode()]
    records = await read_topics(infra.kafka_bootstrap, NAMESPACE)
    documents = await dump_databases(infra.mongodb_uri, NAMESPACE)
    logs = [p.read_bytes() for p in (workdir / NAMESPACE).rglob("*.log")]
    assert records
    assert documents
    assert logs
    for encoded in encodings:
        assert not [r for r in records if encoded in r[1] or encoded in r[2]], "secret in Kafka"
        assert not [d for d in documents if encoded in d], "secret in MongoDB"
        assert not [log for log in logs if encoded in log], "secret in a log"
