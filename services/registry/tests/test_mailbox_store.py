"""MongoMailboxStore against the session's real MongoDB-protocol server."""

import asyncio
import secrets
from typing import Any

import pytest
from pydantic import SecretStr
from pymongo import AsyncMongoClient

from mailbox_link_shared.crypto import SecretBox, generate_key
from mailbox_link_shared.events import MailboxOwner, ProviderType, ServerSettings, utc_now
from registry.adapters.mailbox_store import AddressTaken, LinkedMailbox, MongoMailboxStore

pytestmark = pytest.mark.connected
ALICE = MailboxOwner(account_id="acme", user_id="alice")
BOB = MailboxOwner(account_id="globex", user_id="bob")


@pytest.fixture
async def store(mongo_client: AsyncMongoClient[dict[str, Any]]) -> MongoMailboxStore:
    store = MongoMailboxStore(mongo_client, f"store-test-{secrets.token_hex(4)}")
    await store.create_indexes()
    return store


def _mailbox(owner: MailboxOwner, link_id: str, host: str = "imap.example.org") -> LinkedMailbox:
    server = ServerSettings(host=host, port=993, security="ssl", username="a@example.org")
    sealed = SecretBox({"k": SecretStr(generate_key())}, "k").seal("{}", "a@example.org")
    return LinkedMailbox(
        secrets.token_hex(8),
        "a@example.org",
        owner,
        ProviderType.IMAP,
        server,
        server,
        sealed,
        link_id,
        utc_now(),
    )


async def test_racing_inserts_for_one_address_leave_exactly_one_owner(
    store: MongoMailboxStore,
) -> None:
    results = await asyncio.gather(
        *(store.insert(_mailbox(owner, f"l{i}")) for i, owner in enumerate([ALICE, BOB] * 5)),
        return_exceptions=True,
    )
    assert sum(r is None for r in results) == 1
    assert all(isinstance(r, AddressTaken) for r in results if r is not None)
    assert await store.count_for_owner(ALICE) + await store.count_for_owner(BOB) == 1


async def test_refresh_keeps_identity_and_takes_new_settings(store: MongoMailboxStore) -> None:
    original = _mailbox(ALICE, "l1")
    await store.insert(original)
    refreshed = await store.refresh(_mailbox(ALICE, "l2", host="imap2.example.org"))
    assert refreshed.mailbox_id == original.mailbox_id
    assert refreshed.link_id == "l2"
    assert refreshed.imap.host == "imap2.example.org"


async def test_only_the_owner_can_delete(store: MongoMailboxStore) -> None:
    await store.insert(_mailbox(ALICE, "l1"))
    assert await store.delete(BOB, "a@example.org") is None
    deleted = await store.delete(ALICE, "a@example.org")
    assert deleted is not None
    assert await store.find_by_address("a@example.org") is None
