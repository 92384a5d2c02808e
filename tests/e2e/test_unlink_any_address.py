"""Any address the API accepts can be unlinked and looked up: one with "/" in its local part
(linked through Dovecot, which delivers to it) is unlinked by its percent-encoded address and
by its mailbox_id, and each time its plan slot is free again."""

import secrets
from typing import Any
from urllib.parse import quote

import httpx

from localinfra.stack import Endpoints, LocalStack

from .conftest import MailUser, imap_body, link_and_wait, unique_user_id
from .probes import events_about


def _slash_user(local_stack: LocalStack) -> tuple[MailUser, str]:
    """A Dovecot mailbox whose address has "/" in its local part. Dovecot refuses "/" in a
    login name (auth_username_chars), so it logs in as a plain name, hosting-provider style."""
    hexed = secrets.token_hex(4)
    user = MailUser(f"dept/sales-{hexed}@example.org", "pw-" + hexed)
    login = f"sales-{hexed}"
    local_stack.add_mail_user(login, user.password, address=user.address)
    return user, login


def _body(infra: Endpoints, user: MailUser, login: str) -> dict[str, Any]:
    body = imap_body(infra, user)
    body["imap"]["username"] = body["smtp"]["username"] = login
    return body


async def test_an_address_with_a_slash_unlinks_by_encoded_address_and_by_mailbox_id(
    api: httpx.AsyncClient,
    registry_api: httpx.AsyncClient,
    sign_in_api: httpx.AsyncClient,
    infra: Endpoints,
    local_stack: LocalStack,
) -> None:
    user, login = _slash_user(local_stack)
    user_id = unique_user_id()
    mailboxes = f"/v1/accounts/acme/users/{user_id}/mailboxes"
    plan = await registry_api.put(f"/v1/accounts/acme/users/{user_id}/plan", json={"plan": "free"})
    assert plan.json()["mailbox_limit"] == 1
    encoded = quote(user.address, safe="")

    first = await link_and_wait(api, "acme", user_id, _body(infra, user, login))
    assert first["status"] == "linked", first
    assert first["email"] == user.address
    owner = await sign_in_api.get(f"/v1/mailboxes/{encoded}/owner")
    assert owner.status_code == 200, owner.text
    assert owner.json()["mailbox_id"] == first["mailbox_id"]
    assert (await api.delete(f"{mailboxes}/{encoded}")).status_code == 204
    assert (await api.get(mailboxes)).json()["mailboxes"] == []
    assert await _used(registry_api, user_id) == 0
    assert (await sign_in_api.get(f"/v1/mailboxes/{encoded}/owner")).status_code == 404

    # The slot is free: the same mailbox links again on the one-mailbox plan, and goes by id.
    second = await link_and_wait(api, "acme", user_id, _body(infra, user, login))
    assert second["status"] == "linked", second
    assert second["mailbox_id"] != first["mailbox_id"]
    gone = await api.delete(f"{mailboxes}/{first['mailbox_id']}")
    assert gone.status_code == 404  # the first mailbox is no more
    assert gone.json()["fields"][0]["field"] == "mailbox"
    assert (await api.delete(f"{mailboxes}/{second['mailbox_id']}")).status_code == 204
    assert await _used(registry_api, user_id) == 0
    unlinked = [
        value
        for _, value in await events_about(infra.kafka_bootstrap, "e2e", user.address)
        if b'"MailboxUnlinked"' in value
    ]
    assert len(unlinked) == 2


async def _used(registry_api: httpx.AsyncClient, user_id: str) -> int:
    plan = await registry_api.get(f"/v1/accounts/acme/users/{user_id}/plan")
    used: int = plan.json()["mailboxes_used"]
    return used
