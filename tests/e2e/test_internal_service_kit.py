"""The parts of issue 17's end-to-end proof that need no new endpoint: the example internal
service follows MailboxLinked on the real topic and uses the mailbox through its servers (a
password mailbox linked through the outage forwarder, which needs an ownership proof and keeps
working across a forwarder stop and start; an OAuth mailbox with the token the broker holds),
with access answers built by hand where the registry's endpoint will give them."""

from typing import Any

import httpx
import pytest

from localinfra import LocalOAuthServer
from localinfra.forwarder import TcpForwarder
from localinfra.stack import Endpoints
from mailbox_link_contract.events import MailboxLinked
from mailbox_link_contract.topics import Topics

from ..example_internal_service.access import parse_access
from ..example_internal_service.events import MailboxEvents, is_linked, topic_end
from ..example_internal_service.mailer import find_message, send_message
from .conftest import imap_body, link_and_wait, unique_user_id
from .oauth_flow import Browser, final_owner, link_through_sign_in, new_account


async def test_a_mailbox_linked_through_the_forwarder_is_seen_used_and_survives_an_outage(
    api: httpx.AsyncClient, registry_api: httpx.AsyncClient, infra: Endpoints, new_mail_user: Any
) -> None:
    topic = Topics.for_namespace("e2e").mailboxes
    start = await topic_end(infra.kafka_bootstrap, topic)
    user, user_id = new_mail_user("outage"), unique_user_id()
    targets = {"imaps": infra.imaps_port, "submissions": infra.submissions_port}
    with TcpForwarder(targets) as forwarder:
        body = imap_body(
            infra,
            user,
            imap_port=forwarder.ports["imaps"],
            smtp_port=forwarder.ports["submissions"],
        )
        link = await link_and_wait(api, "acme", user_id, body)
        assert link["status"] == "linked", link
        listed = await registry_api.get(f"/v1/accounts/acme/users/{user_id}/mailboxes")
        [mailbox] = listed.json()["mailboxes"]
        # localhost on a port the domain does not publish: linked by the proof, which the
        # MX-routing relay delivered and the verifier found through the forwarder.
        assert mailbox["authority"] == "ownership_proof"
        assert mailbox["imap"]["port"] == forwarder.ports["imaps"]

        async with MailboxEvents(infra.kafka_bootstrap, topic, user.address, start=start) as seen:
            linked = await seen.wait_for(is_linked, within=30)
        assert isinstance(linked, MailboxLinked)
        assert linked.data.mailbox_id == link["mailbox_id"]

        # The access the registry will hand out (docs/adr/0023), built from the listing here.
        answer = _password_access(mailbox, user.address, user.password)
        access = parse_access(answer, linked.data.mailbox_id)
        sent = await send_message(access, infra.ca_file)
        assert (await find_message(access, infra.ca_file, sent.message_id)).subject == sent.subject

        forwarder.stop()
        with pytest.raises(ConnectionRefusedError):
            await send_message(access, infra.ca_file, timeout=5)
        forwarder.start()
        again = await send_message(access, infra.ca_file)
        assert (await find_message(access, infra.ca_file, again.message_id)).subject


async def test_an_oauth_mailbox_is_seen_and_used_with_its_token_through_xoauth2(
    api: httpx.AsyncClient,
    registry_api: httpx.AsyncClient,
    infra: Endpoints,
    oauth: LocalOAuthServer,
    browser: Browser,
) -> None:
    topic = Topics.for_namespace("e2e").mailboxes
    start = await topic_end(infra.kafka_bootstrap, topic)
    address = new_account(oauth, "google")
    link, _ = await link_through_sign_in(api, browser, address)
    assert link["status"] == "linked", link
    async with MailboxEvents(infra.kafka_bootstrap, topic, address, start=start) as seen:
        linked = await seen.wait_for(is_linked, within=30)
    assert linked.data.mailbox_id == link["mailbox_id"]
    user_id = final_owner(link)
    listed = await registry_api.get(f"/v1/accounts/acme/users/{user_id}/mailboxes")
    [mailbox] = listed.json()["mailboxes"]
    # The broker's current access token: what the registry's endpoint will hand out.
    token = oauth.issued_tokens(address, "access_token")[-1]
    servers = {
        name: {key: mailbox[name].get(key, address) for key in ("host", "port", "security")}
        | {"username": mailbox[name].get("username", address)}
        for name in ("imap", "smtp")
    }
    answer = {"address": address, "auth": "oauth", **servers, "access_token": token}
    access = parse_access({**answer, "sasl_mechanism": "XOAUTH2"}, linked.data.mailbox_id)
    sent = await send_message(access, infra.ca_file)
    assert (await find_message(access, infra.ca_file, sent.message_id)).subject == sent.subject


def _password_access(mailbox: dict[str, Any], address: str, password: str) -> dict[str, Any]:
    servers = {
        name: {
            "host": mailbox[name]["host"],
            "port": mailbox[name]["port"],
            "security": mailbox[name]["security"],
            "username": mailbox[name].get("username", address),
            "password": password,
        }
        for name in ("imap", "smtp")
    }
    return {"address": address, "auth": "password", **servers, "sasl_mechanisms": ["PLAIN"]}
