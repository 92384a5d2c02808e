"""Any address the API accepts can be unlinked and looked up: one with "/" in its local part is
unlinked through link-api by its percent-encoded address and by its mailbox_id, and each time
its plan slot is free again.

Dovecot refuses "/" in a user name (`auth_username_chars`: its LMTP answers "554 5.5.0
Delivery failed", so the ownership proof cannot reach such an INBOX), so the test plays
link-api's request and the verifier's success on Kafka, as the registry's own e2e tests do,
against link-api and the registry in their own namespace (no verifier to race them).
"""

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from localinfra.registry_driver import EventSender, MailboxesTopic, link_requested, verified
from localinfra.services import RunningServices, start_services
from localinfra.stack import Endpoints
from mailbox_link_contract.events import MailboxLinked, MailboxOwner

from .conftest import caller, operator, service_config, unique_user_id
from .probes import events_about

NAMESPACE = "e2e-unlink"


@pytest.fixture
async def unlink_services(infra: Endpoints, workdir: Path) -> AsyncIterator[RunningServices]:
    config = service_config(infra, namespace=NAMESPACE)
    running = await asyncio.to_thread(
        start_services, config, workdir / NAMESPACE, ("registry", "link_api")
    )
    try:
        yield running
    finally:
        await asyncio.to_thread(running.stop)


async def _link(infra: Endpoints, account: str, user: str, address: str) -> str:
    """Links the address for the user through the registry's events; returns the mailbox_id."""
    request = link_requested(MailboxOwner(account_id=account, user_id=user), address)
    async with MailboxesTopic(infra.kafka_bootstrap, NAMESPACE) as topic:
        async with EventSender(infra.kafka_bootstrap, NAMESPACE) as sender:
            await sender.send([request])
            await sender.send([verified(request)])
        await topic.wait_for_finals([request.data.link_id])
        final = topic.final_events()[request.data.link_id]
    assert isinstance(final, MailboxLinked), final
    return final.data.mailbox_id


async def test_an_address_with_a_slash_unlinks_by_encoded_address_and_by_mailbox_id(
    unlink_services: RunningServices, infra: Endpoints
) -> None:
    address, user_id = f"dept/sales-{unique_user_id()}@example.org", unique_user_id()
    encoded = quote(address, safe="")
    mailboxes = f"/v1/accounts/acme/users/{user_id}/mailboxes"
    sign_in_headers = {"Authorization": f"Bearer {unlink_services.sign_in_token}"}
    async with (
        caller(unlink_services.api_url, unlink_services) as api,
        operator(unlink_services.registry_url, unlink_services) as registry,
        httpx.AsyncClient(
            base_url=unlink_services.registry_url, headers=sign_in_headers
        ) as sign_in,
    ):
        plan = await registry.put(f"/v1/accounts/acme/users/{user_id}/plan", json={"plan": "free"})
        assert plan.json()["mailbox_limit"] == 1, plan.text

        first = await _link(infra, "acme", user_id, address)
        [listed] = (await api.get(mailboxes)).json()["mailboxes"]
        assert (listed["email"], listed["mailbox_id"]) == (address, first)
        found = await sign_in.get(f"/v1/mailboxes/{encoded}/owner")
        assert found.status_code == 200, found.text
        assert found.json()["mailbox_id"] == first
        unlinked = await api.delete(f"{mailboxes}/{encoded}")
        assert unlinked.status_code == 204, unlinked.text
        assert (await api.get(mailboxes)).json()["mailboxes"] == []
        assert await _used(registry, user_id) == 0
        assert (await sign_in.get(f"/v1/mailboxes/{encoded}/owner")).status_code == 404

        # The one slot of the free plan is free: the address links again, and goes by its id.
        second = await _link(infra, "acme", user_id, address)
        assert second != first
        gone = await api.delete(f"{mailboxes}/{first}")
        assert gone.status_code == 404, gone.text  # the first mailbox is no more
        assert gone.json()["fields"][0]["field"] == "mailbox"
        by_id = await api.delete(f"{mailboxes}/{second}")
        assert by_id.status_code == 204, by_id.text
        assert await _used(registry, user_id) == 0
    unlinked_events = [
        value
        for _, value in await events_about(infra.kafka_bootstrap, NAMESPACE, address)
        if b'"MailboxUnlinked"' in value
    ]
    assert len(unlinked_events) == 2


async def _used(registry: httpx.AsyncClient, user_id: str) -> int:
    plan = await registry.get(f"/v1/accounts/acme/users/{user_id}/plan")
    used: int = plan.json()["mailboxes_used"]
    return used
