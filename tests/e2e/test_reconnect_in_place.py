"""Reconnect in place end to end (docs/adr/0019): the owner links their mailbox again, with a
new password or by signing in again, and it keeps its mailbox_id and plan slot. Real Kafka,
FerretDB, Dovecot, the local OAuth server and all four services."""

import asyncio
import imaplib
import json
import secrets
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pymongo import AsyncMongoClient

from localinfra import LocalOAuthServer
from localinfra.registry_driver import EventSender, registry_documents
from localinfra.services import RunningServices
from localinfra.stack import Endpoints, LocalStack
from mailbox_link_contract.events import (
    Failure,
    MailboxOwner,
    MailboxReconnectRequired,
    MailboxReconnectRequiredData,
    ProviderType,
)
from mailbox_link_contract.failures import FailureCode

from .conftest import (
    MailUser,
    caller,
    imap_body,
    link_and_wait,
    operator,
    request_link,
    running_services,
    service_config,
    unique_user_id,
    wait_for_outcome,
)
from .oauth_flow import Browser, confirm, new_account, wait_for_sign_in_url
from .probes import read_topics
from .registry_checks import assert_registry_consistent

# The namespace of the session's services (conftest.services).
SESSION_NAMESPACE = "e2e"

# --- a password mailbox -----------------------------------------------------------------------


async def test_a_password_mailbox_reconnects_in_place_with_its_new_password_at_the_plan_limit(
    api: httpx.AsyncClient,
    registry_api: httpx.AsyncClient,
    services: RunningServices,
    infra: Endpoints,
    local_stack: LocalStack,
    new_mail_user: Any,
) -> None:
    user, user_id = new_mail_user("reconnect"), unique_user_id()
    plan_path = f"/v1/accounts/acme/users/{user_id}/plan"
    assert (await registry_api.put(plan_path, json={"plan": "free"})).status_code == 200
    linked = await link_and_wait(api, "acme", user_id, imap_body(infra, user))
    assert linked["status"] == "linked", linked
    mailbox_id = linked["mailbox_id"]

    # The user changes the password at their mail host; the product learns the old one stopped
    # working (here from MailboxReconnectRequired, as the broker reports it for tokens; the
    # scheduled checks find it too, in test_mailbox_health.py) and asks them to reconnect.
    changed = MailUser(user.address, secrets.token_urlsafe(18))
    local_stack.add_mail_user(changed.address, changed.password)
    await _wait_until_dovecot_accepts(infra, changed)
    await _report_reconnect_required(infra, user_id, linked, user.address)
    await _wait_for_status(api, user_id, "reconnect_required")

    # Linked again with the new password, no flag needed: reconnected, not already_linked.
    again = await link_and_wait(api, "acme", user_id, imap_body(infra, changed))
    assert again["status"] == "linked", again
    assert (again["mailbox_id"], again["reconnected"], again["already_linked"]) == (
        mailbox_id, True, False,
    )  # fmt: skip
    [mailbox] = await _mailboxes(api, user_id)
    assert (mailbox["mailbox_id"], mailbox["status"]) == (mailbox_id, "active")
    plan = (await registry_api.get(plan_path)).json()
    assert (plan["mailbox_limit"], plan["mailboxes_used"]) == (1, 1)  # the same one slot
    [reconnected] = await _reconnected_events(infra, SESSION_NAMESPACE, again["link_id"])
    assert reconnected["data"]["mailbox_id"] == mailbox_id
    assert reconnected["producer"] == "registry"

    # Active now: linked again without reconnect it is already linked; with it, reconnected.
    plain = await link_and_wait(api, "acme", user_id, imap_body(infra, changed))
    assert (plain["status"], plain["already_linked"], plain["reconnected"]) == (
        "linked", True, False,
    )  # fmt: skip
    assert plain["mailbox_id"] == mailbox_id
    asked = await link_and_wait(
        api, "acme", user_id, {**imap_body(infra, changed), "reconnect": True}
    )
    assert (asked["status"], asked["reconnected"], asked["mailbox_id"]) == (
        "linked", True, mailbox_id,
    )  # fmt: skip
    assert len(await _mailboxes(api, user_id)) == 1


async def test_a_failed_reconnect_leaves_the_mailbox_linked_and_flagged(
    api: httpx.AsyncClient,
    services: RunningServices,
    infra: Endpoints,
    new_mail_user: Any,
) -> None:
    user, user_id = new_mail_user("reconnect-fail"), unique_user_id()
    linked = await link_and_wait(api, "acme", user_id, imap_body(infra, user))
    assert linked["status"] == "linked", linked
    await _report_reconnect_required(infra, user_id, linked, user.address)
    await _wait_for_status(api, user_id, "reconnect_required")
    wrong = imap_body(infra, user)
    wrong["imap"]["password"] = wrong["smtp"]["password"] = "not-the-password"
    failed = await link_and_wait(api, "acme", user_id, wrong)
    assert failed["status"] == "failed"
    assert failed["failure"]["code"] == "imap_auth_failed"
    [mailbox] = await _mailboxes(api, user_id)
    assert (mailbox["mailbox_id"], mailbox["status"]) == (
        linked["mailbox_id"],
        "reconnect_required",
    )


async def test_reconnect_must_be_a_boolean(api: httpx.AsyncClient, infra: Endpoints) -> None:
    user = MailUser("nobody@example.org", "irrelevant-password")
    body = {**imap_body(infra, user), "reconnect": "yes"}
    response = await api.post(f"/v1/accounts/acme/users/{unique_user_id()}/links", json=body)
    assert response.status_code == 422, response.text
    assert [f["field"] for f in response.json()["fields"]] == ["reconnect"]


# --- an OAuth mailbox -------------------------------------------------------------------------

NAMESPACE = "e2e-reconnect"


@pytest.fixture(scope="module")
def oauth_services(
    infra: Endpoints, workdir: Path, local_stack: LocalStack
) -> Iterator[RunningServices]:
    # A fast timer and a wide refresh margin: tokens are refreshed every round.
    config = service_config(
        infra,
        namespace=NAMESPACE,
        extra_env={
            "MBL_OAUTH_REFRESH_MARGIN_SECONDS": "30",
            "MBL_HOUSEKEEPING_INTERVAL_SECONDS": "0.5",
        },
    )
    with running_services(config, workdir / NAMESPACE, local_stack.oauth_server) as running:
        yield running


@pytest.fixture
async def oauth_api(oauth_services: RunningServices) -> AsyncIterator[httpx.AsyncClient]:
    async with caller(oauth_services.api_url, oauth_services) as client:
        yield client


@pytest.fixture
async def oauth_registry(oauth_services: RunningServices) -> AsyncIterator[httpx.AsyncClient]:
    async with operator(oauth_services.registry_url, oauth_services) as client:
        yield client


async def test_an_oauth_mailbox_refused_for_good_reconnects_with_the_same_account_only(
    oauth_api: httpx.AsyncClient,
    oauth_registry: httpx.AsyncClient,
    oauth_services: RunningServices,
    browser: Browser,
    oauth: LocalOAuthServer,
    infra: Endpoints,
) -> None:
    address, user_id = new_account(oauth, "google"), unique_user_id()
    oauth.access_token_lifetime = 20  # inside the 30 s margin: refreshed every round
    try:
        first, _ = await _sign_in_link(oauth_api, browser, user_id, address)
        assert first["status"] == "linked", first
        mailbox_id = first["mailbox_id"]
        oauth.revoke_refresh_tokens("google", address)  # the user removed our app
        await _wait_for_status(oauth_api, user_id, "reconnect_required", seconds=60)

        # Another account under the same address (the user was deleted and recreated).
        oauth.set_subject("google", address, "9" * 21)
        other, page = await _sign_in_link(oauth_api, browser, user_id, address)
        assert other["status"] == "failed", other
        assert other["failure"]["code"] == "account_mismatch"
        assert "the account you linked before" in other["failure"]["detail"]
        assert 'data-code="account_mismatch"' in page.text
        [mailbox] = await _mailboxes(oauth_api, user_id)
        assert (mailbox["mailbox_id"], mailbox["status"]) == (mailbox_id, "reconnect_required")

        # The account it was linked with signs in again: reconnected in place.
        oauth.set_subject("google", address, None)
        again, _ = await _sign_in_link(oauth_api, browser, user_id, address)
        assert again["status"] == "linked", again
        assert (again["mailbox_id"], again["reconnected"]) == (mailbox_id, True)
        [mailbox] = await _mailboxes(oauth_api, user_id)
        assert (mailbox["mailbox_id"], mailbox["status"]) == (mailbox_id, "active")
        [event] = await _reconnected_events(infra, NAMESPACE, again["link_id"])
        assert event["data"]["mailbox_id"] == mailbox_id

        # Token upkeep goes on with the new tokens: refreshes succeed (the old refresh token
        # is revoked, so one made with it would flag the mailbox again), under the mailbox's
        # own grant.
        newest = oauth.issued_tokens(address, "refresh_token")[-1]
        assert not oauth.was_revoked(newest)
        issued = len(oauth.issued_tokens(address, "access_token"))

        async def refreshed_twice() -> bool:
            return len(oauth.issued_tokens(address, "access_token")) >= issued + 2

        await _wait_until(refreshed_twice)
        [mailbox] = await _mailboxes(oauth_api, user_id)
        assert mailbox["status"] == "active"
        mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(infra.mongodb_uri)
        try:
            grants = mongo[f"{NAMESPACE}-oauth-broker"]["grants"]
            [grant] = await grants.find({"address": address}).to_list()
            assert (grant["_id"], grant["status"]) == (first["link_id"], "active")
        finally:
            await mongo.close()
        # The registry keeps the reconnect's sealed tokens for the mailbox, and only those;
        # one holder of each address, hold and slot.
        documents = await registry_documents(infra.mongodb_uri, NAMESPACE)
        ours = {link["_id"] for link in documents["links"] if link["address"] == address}
        kept = {v["_id"] for v in documents["verifications"]} & ours
        assert kept == {again["link_id"]}
        assert_registry_consistent(documents)
    finally:
        oauth.access_token_lifetime = 3600
        oauth.set_subject("google", address, None)


async def test_an_active_oauth_mailbox_is_signed_in_again_only_when_reconnect_is_asked(
    oauth_api: httpx.AsyncClient,
    browser: Browser,
    oauth: LocalOAuthServer,
    infra: Endpoints,
) -> None:
    address, user_id = new_account(oauth, "google"), unique_user_id()
    first, _ = await _sign_in_link(oauth_api, browser, user_id, address)
    assert first["status"] == "linked", first
    body = {"email": address, "terms_accepted": True}
    accepted = await request_link(oauth_api, "acme", user_id, body)
    plain = await wait_for_outcome(oauth_api, accepted["status_url"])
    assert (plain["status"], plain["already_linked"], plain["authorization"]) == (
        "linked", True, None,
    )  # fmt: skip
    old_refresh = oauth.issued_tokens(address, "refresh_token")[-1]

    again, _ = await _sign_in_link(oauth_api, browser, user_id, address, reconnect=True)
    assert (again["status"], again["reconnected"], again["mailbox_id"]) == (
        "linked", True, first["mailbox_id"],
    )  # fmt: skip
    [event] = await _reconnected_events(infra, NAMESPACE, again["link_id"])
    assert event["data"]["mailbox_id"] == first["mailbox_id"]
    # Google ends every grant of the user when one token is revoked: the replaced tokens are
    # only deleted, and the new ones keep working.
    newest = oauth.issued_tokens(address, "refresh_token")[-1]
    assert newest != old_refresh
    assert not oauth.was_revoked(newest)
    [mailbox] = await _mailboxes(oauth_api, user_id)
    assert (mailbox["mailbox_id"], mailbox["status"]) == (first["mailbox_id"], "active")


# --- helpers ----------------------------------------------------------------------------------


async def _sign_in_link(
    api: httpx.AsyncClient, browser: Browser, user_id: str, address: str, **extra: Any
) -> tuple[dict[str, Any], httpx.Response]:
    """Links (or reconnects) a Google mailbox of this user through its sign-in."""
    body = {"email": address, "terms_accepted": True, **extra}
    accepted = await request_link(api, "acme", user_id, body)
    link = await wait_for_sign_in_url(api, accepted["status_url"])
    assert link["status"] == "authorization_required", link  # a sign-in is offered
    page = await browser.open(await browser.consent(link["authorization"]["url"], address))
    if 'data-result="verified"' in page.text:
        assert (await confirm(api, page, user_id=user_id)).status_code == 200
    return await wait_for_outcome(api, link["status_url"]), page


async def _mailboxes(api: httpx.AsyncClient, user_id: str) -> list[dict[str, Any]]:
    response = await api.get(f"/v1/accounts/acme/users/{user_id}/mailboxes")
    assert response.status_code == 200, response.text
    listed: list[dict[str, Any]] = response.json()["mailboxes"]
    return listed


async def _wait_for_status(
    api: httpx.AsyncClient, user_id: str, status: str, seconds: float = 30
) -> None:
    async def shows() -> bool:
        return [m["status"] for m in await _mailboxes(api, user_id)] == [status]

    await _wait_until(shows, seconds)


async def _wait_until(condition: Any, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not await condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


async def _report_reconnect_required(
    infra: Endpoints,
    user_id: str,
    link: dict[str, Any],
    address: str,
) -> None:
    """Publishes what the OAuth broker publishes when a mailbox's authorization stops working."""
    data = MailboxReconnectRequiredData(
        mailbox_id=link["mailbox_id"],
        link_id=link["link_id"],
        owner=MailboxOwner(account_id="acme", user_id=user_id),
        address=address,
        provider=ProviderType.IMAP,
        failure=Failure.of(FailureCode.RECONNECT_REQUIRED, "login refused: password changed"),
    )
    event = MailboxReconnectRequired(
        correlation_id=link["link_id"], producer="oauth-broker", data=data
    )
    async with EventSender(infra.kafka_bootstrap, SESSION_NAMESPACE) as sender:
        await sender.send([event])


async def _wait_until_dovecot_accepts(infra: Endpoints, user: MailUser) -> None:
    """Dovecot re-reads its users at most once a second: wait for the new password to work."""
    context = ssl.create_default_context(cafile=infra.ca_file)
    context.check_hostname = False  # the certificate names tls_hostname; we dial mail_host

    def logs_in() -> bool:
        try:
            with imaplib.IMAP4_SSL(infra.mail_host, infra.imaps_port, ssl_context=context) as imap:
                imap.login(user.address, user.password)
                return True
        except imaplib.IMAP4.error:
            return False

    async def accepted() -> bool:
        return await asyncio.to_thread(logs_in)

    await _wait_until(accepted, seconds=20)


async def _reconnected_events(
    infra: Endpoints, namespace: str, link_id: str
) -> list[dict[str, Any]]:
    """The MailboxReconnected events of this link on the topics (one, deduplicated by id)."""
    records = await read_topics(infra.kafka_bootstrap, namespace)
    events = [json.loads(value) for _, _, value in records if b"MailboxReconnected" in value]
    ours = {e["event_id"]: e for e in events if e.get("type") == "MailboxReconnected"}
    return [e for e in ours.values() if e["data"]["link_id"] == link_id]
