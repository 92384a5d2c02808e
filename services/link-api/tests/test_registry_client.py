"""link-api's registry client: a refused key is configuration to fix, said plainly in the log."""

import logging

import httpx
import pytest

from link_api.adapters.registry_client import HttpRegistry, RegistryUnavailable
from mailbox_link_contract.events import MailboxOwner

OWNER = MailboxOwner(account_id="acme", user_id="u1")


@pytest.mark.parametrize("status", [401, 403])
async def test_a_refused_registry_key_is_unavailable_and_logs_the_scope_to_grant(
    status: int, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse(_: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json={"error": "forbidden"})

    transport = httpx.MockTransport(refuse)
    async with httpx.AsyncClient(transport=transport, base_url="http://registry") as client:
        with caplog.at_level(logging.ERROR), pytest.raises(RegistryUnavailable):
            await HttpRegistry(client).list_mailboxes(OWNER)
    assert "scope 'registry'" in caplog.text
    assert "MBL_REGISTRY_TOKEN" in caplog.text
