"""Mailbox access end to end (docs/adr/0023): an internal service's key (`mailer`, scope
mailbox_access) asks the registry for a linked mailbox and logs in with what it gets: a
password mailbox's password over IMAPS, an OAuth mailbox's access token over XOAUTH2 at the
OAuth Dovecot, the token fetched from the broker over HTTP (refreshed first when it expires
within the margin). Other keys get 403, a key bound to another account 404; no secret handed
out appears in any service's log. Real Kafka, FerretDB, Dovecot, OAuth server, all services."""

import asyncio
import imaplib
import ssl
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from localinfra import LocalOAuthServer
from localinfra.services import RunningServices
from localinfra.stack import Endpoints

from .conftest import imap_body, link_and_wait, unique_user_id
from .oauth_flow import Browser, link_through_sign_in, new_account

pytestmark = pytest.mark.connected


@pytest.fixture
async def mailer(services: RunningServices) -> AsyncIterator[httpx.AsyncClient]:
    """The registry as an internal service granted mailbox access calls it."""
    headers = {"Authorization": f"Bearer {services.mailer_token}"}
    async with httpx.AsyncClient(
        base_url=services.registry_url, headers=headers, timeout=30
    ) as client:
        yield client


def access_path(mailbox_id: str, account_id: str = "acme") -> str:
    return f"/v1/accounts/{account_id}/mailboxes/{mailbox_id}/access"


def imap_login(ca_file: str, settings: dict[str, Any], authenticate: Any) -> None:
    context = ssl.create_default_context(cafile=ca_file)
    with imaplib.IMAP4_SSL(settings["host"], settings["port"], ssl_context=context) as imap:
        authenticate(imap)
        status, _ = imap.select("INBOX")
        assert status == "OK"


async def test_a_password_mailbox_is_used_with_the_password_the_registry_hands_out(
    api: httpx.AsyncClient,
    mailer: httpx.AsyncClient,
    services: RunningServices,
    infra: Endpoints,
    new_mail_user: Any,
) -> None:
    user = new_mail_user("access")
    linked = await link_and_wait(api, "acme", unique_user_id(), imap_body(infra, user))
    assert linked["status"] == "linked", linked
    mailbox_id = linked["mailbox_id"]

    answer = await mailer.post(access_path(mailbox_id))
    assert answer.status_code == 200, answer.text
    assert answer.headers["cache-control"] == "no-store"
    body = answer.json()
    assert (body["auth"], body["status"], body["email"]) == ("password", "active", user.address)
    assert body["sasl_mechanisms"] == ["PLAIN", "LOGIN"]
    imap = body["imap"]
    assert imap["password"] == user.password
    await asyncio.to_thread(
        imap_login, infra.ca_file, imap, lambda c: c.login(imap["username"], imap["password"])
    )

    # The product's key (scope links) and a mailbox_access key bound to another account.
    product = {"Authorization": f"Bearer {services.caller_token}"}
    assert (await mailer.post(access_path(mailbox_id), headers=product)).status_code == 403
    bound = {"Authorization": f"Bearer {services.bound_mailer_token}"}
    assert (await mailer.post(access_path(mailbox_id), headers=bound)).status_code == 404
    assert (await mailer.post(access_path(mailbox_id, "globex"), headers=bound)).status_code == 404
    assert (await mailer.post(access_path(mailbox_id, "globex"))).status_code == 404
    _assert_not_logged(services, user.password)


async def test_an_oauth_mailbox_is_used_over_xoauth2_with_a_token_refreshed_first(
    api: httpx.AsyncClient,
    mailer: httpx.AsyncClient,
    services: RunningServices,
    infra: Endpoints,
    oauth: LocalOAuthServer,
    browser: Browser,
) -> None:
    address = new_account(oauth, "google")
    oauth.access_token_lifetime = 600  # the sign-in's token: shorter than the margin asked
    try:
        linked, _ = await link_through_sign_in(api, browser, address)
    finally:
        oauth.access_token_lifetime = 3600
    assert linked["status"] == "linked", linked
    mailbox_id = linked["mailbox_id"]

    asked_at = datetime.now(UTC)
    answer = await mailer.post(access_path(mailbox_id), json={"min_valid_seconds": 900})
    assert answer.status_code == 200, answer.text
    assert answer.headers["cache-control"] == "no-store"
    body = answer.json()
    assert (body["auth"], body["sasl_mechanism"]) == ("oauth", "XOAUTH2")
    # The sign-in's token lived 600 s: this one was refreshed for the ask.
    assert datetime.fromisoformat(body["expires_at"]) >= asked_at + timedelta(seconds=900)
    token = body["access_token"]
    assert "password" not in body["imap"]

    def xoauth2(imap: imaplib.IMAP4) -> None:
        raw = f"user={address}\x01auth=Bearer {token}\x01\x01".encode()
        imap.authenticate("XOAUTH2", lambda _: raw)

    servers = {**body["imap"], "host": infra.tls_hostname, "port": infra.oauth_imaps_port}
    await asyncio.to_thread(imap_login, infra.ca_file, servers, xoauth2)

    # A second ask within the margin gets the same token without a refresh.
    again = (await mailer.post(access_path(mailbox_id), json={"min_valid_seconds": 900})).json()
    assert again["access_token"] == token
    _assert_not_logged(services, token)


def _assert_not_logged(services: RunningServices, secret: str) -> None:
    for name, log in services.logs.items():
        assert secret not in log.read_text(errors="replace"), name
