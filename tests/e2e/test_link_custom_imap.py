"""Linking a custom-IMAP mailbox end to end: HTTP -> Kafka -> verifier -> registry -> MongoDB."""

import asyncio
import json
from typing import Any

import httpx
import pytest

from localinfra.services import RunningServices
from localinfra.stack import Endpoints

from .conftest import imap_body, link_and_wait, request_link, unique_user_id, wait_for_outcome
from .probes import events_about


async def test_links_a_mailbox_over_imaps_and_smtps(
    api: httpx.AsyncClient,
    registry_api: httpx.AsyncClient,
    sign_in_api: httpx.AsyncClient,
    infra: Endpoints,
    new_mail_user: Any,
) -> None:
    user, user_id = new_mail_user("imaps"), unique_user_id()
    link = await link_and_wait(api, "acme", user_id, imap_body(infra, user))
    assert link["status"] == "linked", link
    assert link["mailbox_id"]

    listed = (await api.get(f"/v1/accounts/acme/users/{user_id}/mailboxes")).json()["mailboxes"]
    assert [m["email"] for m in listed] == [user.address]
    assert user.password not in str(listed)
    [mailbox] = listed
    assert "credentials" not in mailbox
    assert "password" not in mailbox["imap"]
    assert "password" not in mailbox["smtp"]
    assert (mailbox["auth"], mailbox["status"]) == ("password", "active")
    owner = (await sign_in_api.get(f"/v1/mailboxes/{user.address}/owner")).json()
    assert owner == {"account_id": "acme", "user_id": user_id, "mailbox_id": link["mailbox_id"]}
    # Only the sign-in service may ask, not even an operator: it would tell who linked what.
    refused = await registry_api.get(f"/v1/mailboxes/{user.address}/owner")
    assert refused.status_code == 403
    assert refused.json()["error"] == "forbidden"
    assert refused.json()["fields"][0]["field"] == "Authorization"


async def test_links_a_mailbox_over_starttls(
    api: httpx.AsyncClient, infra: Endpoints, new_mail_user: Any
) -> None:
    user = new_mail_user("starttls")
    body = imap_body(
        infra,
        user,
        imap_port=infra.imap_starttls_port,
        imap_security="starttls",
        smtp_port=infra.submission_starttls_port,
        smtp_security="starttls",
    )
    link = await link_and_wait(api, "acme", unique_user_id(), body)
    assert link["status"] == "linked", link


@pytest.mark.parametrize(
    ("scenario", "code"),
    [
        ("wrong_imap_password", "imap_auth_failed"),
        ("wrong_smtp_password", "smtp_auth_failed"),
        ("pop3_only", "pop3_only"),
        ("untrusted_certificate", "tls_failed"),
        ("closed_port", "imap_unreachable"),
    ],
)
async def test_failed_verification_says_why_and_what_to_do(
    api: httpx.AsyncClient, infra: Endpoints, new_mail_user: Any, scenario: str, code: str
) -> None:
    user = new_mail_user(scenario.replace("_", "-"))
    body = imap_body(infra, user)
    if scenario == "wrong_imap_password":
        body["imap"]["password"] = "not-the-password"
    elif scenario == "wrong_smtp_password":
        body["smtp"]["password"] = "not-the-password"
    elif scenario == "pop3_only":
        body["imap"]["port"] = infra.pop3_port
        body["imap"]["security"] = "starttls"
    elif scenario == "untrusted_certificate":
        body["imap"]["port"] = infra.untrusted_imaps_port
        body["smtp"]["port"] = infra.untrusted_submissions_port
    elif scenario == "closed_port":
        body["imap"]["port"] = infra.closed_port

    link = await link_and_wait(api, "acme", unique_user_id(), body)

    assert link["status"] == "failed", link
    assert link["failure"]["code"] == code
    assert link["failure"]["message"]
    assert link["failure"]["remediation"]


async def test_same_idempotency_key_gives_one_link_and_one_event(
    api: httpx.AsyncClient, infra: Endpoints, services: RunningServices, new_mail_user: Any
) -> None:
    user, user_id = new_mail_user("idem"), unique_user_id()
    body = imap_body(infra, user)
    first, second = await asyncio.gather(
        request_link(api, "acme", user_id, body, **{"Idempotency-Key": "k-1"}),
        request_link(api, "acme", user_id, body, **{"Idempotency-Key": "k-1"}),
    )
    assert first["link_id"] == second["link_id"]
    await wait_for_outcome(api, first["status_url"])
    third = await request_link(api, "acme", user_id, body, **{"Idempotency-Key": "k-1"})
    assert third["link_id"] == first["link_id"]
    assert third["status"] == "linked"
    assert await _link_requests_for(infra, user.address) == 1

    body["smtp"]["port"] = infra.submission_starttls_port
    body["smtp"]["security"] = "starttls"
    reused = await api.post(
        f"/v1/accounts/acme/users/{user_id}/links", json=body, headers={"Idempotency-Key": "k-1"}
    )
    assert reused.status_code == 409
    assert reused.json()["fields"][0]["field"] == "Idempotency-Key"
    assert await _link_requests_for(infra, user.address) == 1


async def test_same_request_while_in_flight_gives_one_link(
    api: httpx.AsyncClient, infra: Endpoints, new_mail_user: Any
) -> None:
    user, user_id = new_mail_user("inflight"), unique_user_id()
    body = imap_body(infra, user)
    answers = await asyncio.gather(*(request_link(api, "acme", user_id, body) for _ in range(3)))
    assert len({a["link_id"] for a in answers}) == 1
    link = await wait_for_outcome(api, answers[0]["status_url"])
    assert link["status"] == "linked"
    assert await _link_requests_for(infra, user.address) == 1


async def test_second_account_cannot_link_a_linked_mailbox(
    api: httpx.AsyncClient, infra: Endpoints, new_mail_user: Any
) -> None:
    user = new_mail_user("taken")
    first = await link_and_wait(api, "acme", unique_user_id(), imap_body(infra, user))
    assert first["status"] == "linked"
    second = await link_and_wait(api, "globex", unique_user_id(), imap_body(infra, user))
    assert second["status"] == "failed"
    assert second["failure"]["code"] == "already_linked_elsewhere"
    assert "acme" not in str(second)


async def test_linking_the_same_mailbox_again_answers_linked_with_the_existing_mailbox(
    api: httpx.AsyncClient, registry_api: httpx.AsyncClient, infra: Endpoints, new_mail_user: Any
) -> None:
    user, user_id = new_mail_user("again"), unique_user_id()
    first = await link_and_wait(api, "acme", user_id, imap_body(infra, user))
    again = await link_and_wait(api, "acme", user_id, imap_body(infra, user))
    assert again["link_id"] != first["link_id"]
    assert again["status"] == "linked"
    assert again["already_linked"] is True
    assert again["mailbox_id"] == first["mailbox_id"]
    used = (await registry_api.get(f"/v1/accounts/acme/users/{user_id}/plan")).json()
    assert used["mailboxes_used"] == 1


async def test_user_at_plan_limit_cannot_link_another(
    api: httpx.AsyncClient, registry_api: httpx.AsyncClient, infra: Endpoints, new_mail_user: Any
) -> None:
    user_id = unique_user_id()
    plan = await registry_api.put(f"/v1/accounts/acme/users/{user_id}/plan", json={"plan": "free"})
    assert plan.json() == {"plan": "free", "mailbox_limit": 1, "mailboxes_used": 0}
    first = await link_and_wait(api, "acme", user_id, imap_body(infra, new_mail_user("plan")))
    assert first["status"] == "linked"
    second = await link_and_wait(api, "acme", user_id, imap_body(infra, new_mail_user("plan")))
    assert second["status"] == "failed"
    assert second["failure"]["code"] == "plan_limit_reached"
    assert "1" in second["failure"]["detail"]


async def test_unlinked_mailbox_can_be_linked_by_another_account(
    api: httpx.AsyncClient, infra: Endpoints, new_mail_user: Any
) -> None:
    user, alice, bob = new_mail_user("relink"), unique_user_id(), unique_user_id()
    assert (await link_and_wait(api, "acme", alice, imap_body(infra, user)))["status"] == "linked"

    assert (
        await api.delete(f"/v1/accounts/globex/users/{bob}/mailboxes/{user.address}")
    ).status_code == 404
    unlinked = await api.delete(f"/v1/accounts/acme/users/{alice}/mailboxes/{user.address}")
    assert unlinked.status_code == 204
    assert (await api.get(f"/v1/accounts/acme/users/{alice}/mailboxes")).json()["mailboxes"] == []

    relinked = await link_and_wait(api, "globex", bob, imap_body(infra, user))
    assert relinked["status"] == "linked", relinked
    events = [value for _, value in await events_about(infra.kafka_bootstrap, "e2e", user.address)]
    assert any(b'"MailboxUnlinked"' in value for value in events)


async def test_a_user_cannot_see_another_users_link(
    api: httpx.AsyncClient, infra: Endpoints, new_mail_user: Any
) -> None:
    user = new_mail_user("private")
    accepted = await request_link(api, "acme", unique_user_id(), imap_body(infra, user))
    other = await api.get(f"/v1/accounts/acme/users/{unique_user_id()}/links/{accepted['link_id']}")
    assert other.status_code == 404
    assert user.address not in other.text


async def _link_requests_for(infra: Endpoints, address: str) -> int:
    """Distinct LinkRequested events (by event_id): a record published again with the same
    event_id (link-api's outbox relay, when a slow publish outlasts its grace) is the same
    event, which consumers drop by id (shared/contract/README.md, "Compatibility")."""
    events = await events_about(infra.kafka_bootstrap, "e2e", address)
    return len(
        {
            json.loads(value)["event_id"]
            for topic, value in events
            if topic.endswith("link-requests.v1")
        }
    )
