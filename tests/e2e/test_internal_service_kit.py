"""The parts of issue 17's end-to-end proof that need no new endpoint: the example internal
service follows MailboxLinked on the real topic and uses the mailbox through its servers, and
a mailbox linked through the outage forwarder (custom ports: an ownership proof) keeps
working across a forwarder stop and start."""

from typing import Any

import httpx
import pytest

from localinfra.forwarder import TcpForwarder
from localinfra.stack import Endpoints
from mailbox_link_contract.events import MailboxLinked
from mailbox_link_contract.topics import Topics

from ..example_internal_service.access import parse_access
from ..example_internal_service.events import MailboxEvents, is_linked, topic_end
from ..example_internal_service.mailer import find_message, send_message
from .conftest import imap_body, link_and_wait, unique_user_id


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
