"""Which servers speak for an address, through real HTTP, Kafka, DNS and the services: typed
servers at a known provider must be the provider's own (else 422, nothing emitted or stored),
and every LinkRequested on Kafka carries the rule that makes its servers speak for it."""

import json
import secrets
from typing import Any

import httpx
import pytest

from localinfra.stack import Endpoints

from .conftest import (
    MailUser,
    imap_body,
    link_and_wait,
    links_path,
    request_link,
    unique_user_id,
    wait_for_outcome,
)
from .probes import count_documents, count_records, events_about


def _foreign_body(infra: Endpoints, address: str) -> dict[str, Any]:
    # The local Dovecot, which would gladly accept a login for any address it has a user for.
    return imap_body(infra, MailUser(address, "pw-authority-never-echoed"))


@pytest.mark.parametrize("domain", ["gmail.com", "googlemail.com", "outlook.com"])
async def test_typed_local_servers_for_a_known_providers_address_are_refused(
    api: httpx.AsyncClient, infra: Endpoints, domain: str
) -> None:
    address, user_id = f"someone-{secrets.token_hex(4)}@{domain}", unique_user_id()
    before = (
        await count_records(infra.kafka_bootstrap, "e2e"),
        await count_documents(infra.mongodb_uri, "e2e"),
    )
    response = await api.post(links_path("acme", user_id), json=_foreign_body(infra, address))
    assert response.status_code == 422, response.text
    refusal = response.json()
    assert refusal["error"] == "provider_servers_required"
    assert f"{domain} is hosted by" in refusal["message"]
    [problem] = refusal["fields"]
    assert problem["field"] == "imap.host"
    assert "sign in with" in problem["message"]
    assert "pw-authority-never-echoed" not in response.text
    # Bad input changes nothing: no event on any topic, no document in any database.
    after = (
        await count_records(infra.kafka_bootstrap, "e2e"),
        await count_documents(infra.mongodb_uri, "e2e"),
    )
    assert after == before
    assert await events_about(infra.kafka_bootstrap, "e2e", address) == []
    listed = await api.get(f"/v1/accounts/acme/users/{user_id}/mailboxes")
    assert listed.json()["mailboxes"] == []


async def test_the_domains_published_servers_link_with_published_settings(
    api: httpx.AsyncClient, infra: Endpoints, new_mail_user: Any
) -> None:
    # example.org's SRV record _imaps._tcp names localhost and this IMAPS port (local DNS).
    user = new_mail_user("published")
    link = await link_and_wait(api, "acme", unique_user_id(), imap_body(infra, user))
    assert link["status"] == "linked", link
    assert await _authorities(infra, user.address) == ["published_settings"]


async def test_a_server_the_domain_does_not_publish_must_prove_ownership(
    api: httpx.AsyncClient, infra: Endpoints
) -> None:
    # The attacker's Dovecot on localhost: example.org publishes another port, and localhost
    # shares no registrable domain with example.org. It has no such user, so the link fails
    # at the login, quickly, and leaves nothing under way for the next test.
    address = f"victim-{secrets.token_hex(4)}@example.org"
    body = imap_body(
        infra,
        MailUser(address, "not-a-user-there-123"),
        imap_port=infra.attacker_imaps_port,
        smtp_port=infra.attacker_submissions_port,
    )
    accepted = await request_link(api, "acme", unique_user_id(), body)
    assert await _authorities(infra, address) == ["ownership_proof"]
    link = await wait_for_outcome(api, accepted["status_url"])
    assert link["status"] == "failed", link


async def _authorities(infra: Endpoints, address: str) -> list[str | None]:
    """Returns the authority of each LinkRequested keyed by this address, as on Kafka."""
    events = await events_about(infra.kafka_bootstrap, "e2e", address)
    requested = [
        json.loads(value)
        for topic, value in events
        if topic.endswith("link-requests.v1") and b'"LinkRequested"' in value
    ]
    return [event["data"].get("authority") for event in requested]
