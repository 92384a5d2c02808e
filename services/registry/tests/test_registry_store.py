"""MongoRegistryStore against the session's real MongoDB-protocol server."""

import asyncio
import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from pydantic import SecretStr
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from mailbox_link_contract.events import MailboxOwner, ProviderType, ServerSettings, utc_now
from mailbox_link_shared.crypto import SecretBox, generate_key
from registry.adapters.registry_store import MongoRegistryStore, UserSlots
from registry.domain.links import IN_FLIGHT, LinkRecord, LinkState, MailboxDetails

ALICE = MailboxOwner(account_id="acme", user_id="alice")
BOB = MailboxOwner(account_id="globex", user_id="bob")
ADDRESS = "box@example.org"
EVENT_1 = "00000000-0000-0000-0000-000000000001"
EVENT_2 = "00000000-0000-0000-0000-000000000002"
OUTBOX: dict[str, Any] = {
    "event_id": EVENT_1,
    "type": "LinkReserved",
    "data": {"link_id": "l1", "owner": {"account_id": "acme", "user_id": "alice"}},
}


@pytest.fixture
async def database(
    mongo_client: AsyncMongoClient[dict[str, Any]],
) -> AsyncIterator[AsyncDatabase[dict[str, Any]]]:
    name = f"registry-test-{secrets.token_hex(4)}"
    yield mongo_client[name]
    await mongo_client.drop_database(name)


@pytest.fixture
async def store(
    mongo_client: AsyncMongoClient[dict[str, Any]], database: AsyncDatabase[dict[str, Any]]
) -> MongoRegistryStore:
    store = MongoRegistryStore(mongo_client, database.name)
    await store.create_indexes()
    return store


def _record(
    link_id: str,
    owner: MailboxOwner = ALICE,
    state: LinkState = LinkState.RESERVING,
    expires_in: timedelta = timedelta(minutes=15),
) -> LinkRecord:
    return LinkRecord(
        link_id=link_id,
        owner=owner,
        address=ADDRESS,
        provider=ProviderType.IMAP,
        state=state,
        expires_at=utc_now() + expires_in,
    )


def _mailbox() -> MailboxDetails:
    server = ServerSettings(host="imap.example.org", port=993, security="ssl", username=ADDRESS)
    sealed = SecretBox({"k": SecretStr(generate_key())}, "k").seal("{}", ADDRESS)
    return MailboxDetails("mb1", server, server, sealed, utc_now())


# --- link records -----------------------------------------------------------------------------


async def test_adding_a_link_twice_keeps_the_first_record(store: MongoRegistryStore) -> None:
    first = _record("l1")
    assert await store.add_link(first) == first
    again = await store.add_link(_record("l1", BOB, LinkState.REJECTED))
    assert again == first
    assert await store.get_link("l1") == first
    assert await store.get_link("nope") is None
    assert [r.link_id for r in await store.get_links(["l1", "nope"])] == ["l1"]
    assert await store.get_links([]) == []


async def test_a_decision_is_taken_only_from_the_expected_states(
    store: MongoRegistryStore,
) -> None:
    await store.add_link(_record("l1"))
    reserved = await store.decide("l1", IN_FLIGHT, LinkState.RESERVED, OUTBOX)
    assert reserved is not None
    assert reserved.state is LinkState.RESERVED
    assert reserved.outbox == OUTBOX
    assert reserved.decision_id == EVENT_1
    assert (
        await store.decide("l1", frozenset({LinkState.RESERVING}), LinkState.REJECTED, {}) is None
    )
    assert await store.decide("nope", IN_FLIGHT, LinkState.REJECTED, OUTBOX) is None
    mailbox = _mailbox()
    linked_outbox = {**OUTBOX, "event_id": EVENT_2}
    linked = await store.decide(
        "l1", frozenset({LinkState.RESERVED}), LinkState.LINKED, linked_outbox, mailbox
    )
    assert linked is not None
    assert linked.mailbox == mailbox
    stored = await store.get_link("l1")
    assert stored == linked
    assert stored.decision_id == EVENT_2
    # A later decision without mailbox details keeps the ones stored.
    unlinked = await store.decide("l1", frozenset({LinkState.LINKED}), LinkState.UNLINKED, OUTBOX)
    assert unlinked is not None
    assert unlinked.mailbox == mailbox


async def test_a_link_document_keeps_its_owner_flat_and_its_outbox_as_json_text(
    store: MongoRegistryStore, database: AsyncDatabase[dict[str, Any]]
) -> None:
    await store.add_link(_record("l1"))
    document = await database["links"].find_one({"_id": "l1"})
    assert document is not None
    assert (document["account_id"], document["user_id"]) == ("acme", "alice")
    assert "owner" not in document
    assert document["outbox"] is None
    await store.decide("l1", IN_FLIGHT, LinkState.RESERVED, OUTBOX)
    document = await database["links"].find_one({"_id": "l1"})
    assert document is not None
    assert isinstance(document["outbox"], str)
    assert json.loads(document["outbox"]) == OUTBOX
    stored = await store.get_link("l1")
    assert stored is not None
    assert stored.owner == ALICE


async def test_a_record_stored_already_decided_reads_back_whole(
    store: MongoRegistryStore,
) -> None:
    rejected = replace(_record("l1", BOB, LinkState.REJECTED), outbox=OUTBOX)
    assert await store.add_link(rejected) == rejected
    assert await store.get_link("l1") == rejected
    assert [r.decision_id for r in await store.get_links(["l1"])] == [EVENT_1]


# --- open decisions ---------------------------------------------------------------------------


async def test_a_decision_is_open_from_its_opening_until_its_closing(
    store: MongoRegistryStore,
) -> None:
    assert not await store.is_decision_open("l1", EVENT_1)
    await store.open_decision("l1", EVENT_1)
    await store.open_decision("l1", EVENT_1)  # opening twice keeps one marker
    assert await store.is_decision_open("l1", EVENT_1)
    assert not await store.is_decision_open("l1", EVENT_2)
    assert not await store.is_decision_open("l2", EVENT_1)
    assert await store.open_decisions(utc_now() + timedelta(seconds=1)) == [("l1", EVENT_1)]
    await store.close_decision("l1", EVENT_2)  # another decision's closing changes nothing
    await store.close_decision("l2", EVENT_1)
    assert await store.is_decision_open("l1", EVENT_1)
    await store.close_decision("l1", EVENT_1)
    await store.close_decision("l1", EVENT_1)  # closing twice is harmless
    assert not await store.is_decision_open("l1", EVENT_1)
    assert await store.open_decisions(utc_now() + timedelta(seconds=1)) == []


async def test_open_decisions_are_found_once_older_than_asked(store: MongoRegistryStore) -> None:
    before = utc_now() - timedelta(seconds=1)
    await store.open_decision("l1", EVENT_1)
    await store.open_decision("l1", EVENT_2)
    await store.open_decision("l2", EVENT_1)
    after = utc_now() + timedelta(seconds=1)
    assert await store.open_decisions(before) == []
    assert sorted(await store.open_decisions(after)) == [
        ("l1", EVENT_1),
        ("l1", EVENT_2),
        ("l2", EVENT_1),
    ]
    await store.close_decision("l1", EVENT_2)
    assert sorted(await store.open_decisions(after)) == [("l1", EVENT_1), ("l2", EVENT_1)]


async def test_reopening_a_decision_keeps_its_first_opening_time(
    store: MongoRegistryStore,
) -> None:
    await store.open_decision("l1", EVENT_1)
    opened = utc_now() + timedelta(milliseconds=1)
    await asyncio.sleep(0.05)
    await store.open_decision("l1", EVENT_1)
    assert await store.open_decisions(opened) == [("l1", EVENT_1)]


async def test_overdue_finds_only_links_in_flight_past_their_expiry(
    store: MongoRegistryStore,
) -> None:
    past = -timedelta(minutes=1)
    await store.add_link(_record("reserving", expires_in=past))
    await store.add_link(_record("reserved", expires_in=past))
    await store.decide("reserved", IN_FLIGHT, LinkState.RESERVED, OUTBOX)
    await store.add_link(_record("linked", state=LinkState.LINKED, expires_in=past))
    await store.add_link(_record("rejected", state=LinkState.REJECTED, expires_in=past))
    await store.add_link(_record("young"))
    overdue = await store.overdue(utc_now())
    assert sorted(r.link_id for r in overdue) == ["reserved", "reserving"]
    later = await store.overdue(utc_now() + timedelta(hours=1))
    assert sorted(r.link_id for r in later) == ["reserved", "reserving", "young"]


# --- address locks ----------------------------------------------------------------------------


async def test_an_address_lock_names_its_holder_and_only_the_holder_unlocks(
    store: MongoRegistryStore,
) -> None:
    assert await store.address_holder(ADDRESS) is None
    assert await store.lock_address(ADDRESS, "l1") == "l1"
    assert await store.lock_address(ADDRESS, "l2") == "l1"
    assert await store.lock_address(ADDRESS, "l1") == "l1"
    await store.unlock_address(ADDRESS, "l2")
    assert await store.address_holder(ADDRESS) == "l1"
    await store.unlock_address(ADDRESS, "l1")
    assert await store.address_holder(ADDRESS) is None
    assert await store.lock_address(ADDRESS, "l2") == "l2"


async def test_only_one_of_concurrent_locks_wins(store: MongoRegistryStore) -> None:
    holders = await asyncio.gather(*(store.lock_address(ADDRESS, f"l{i}") for i in range(8)))
    assert len(set(holders)) == 1
    assert await store.address_holder(ADDRESS) == holders[0]


# --- plan slots -------------------------------------------------------------------------------


async def test_a_new_user_takes_a_slot_on_no_plan(store: MongoRegistryStore) -> None:
    assert await store.take_slot(ALICE, "l1", ADDRESS, None, 1)
    slots = await store.get_slots(ALICE)
    assert slots.plan is None
    assert slots.held == {"l1": ADDRESS}
    assert (await store.get_slots(BOB)).held == {}


async def test_slots_respect_the_limit_and_are_taken_once_per_link(
    store: MongoRegistryStore,
) -> None:
    assert await store.take_slot(ALICE, "l1", "a@example.org", None, 2)
    assert not await store.take_slot(ALICE, "l1", "a@example.org", None, 2)  # already held
    assert await store.take_slot(ALICE, "l2", "b@example.org", None, 2)
    assert not await store.take_slot(ALICE, "l3", "c@example.org", None, 2)
    assert (await store.get_slots(ALICE)).held == {"l1": "a@example.org", "l2": "b@example.org"}
    await store.free_slot(ALICE, "l9")  # a link that holds no slot frees none
    assert not await store.take_slot(ALICE, "l3", "c@example.org", None, 2)
    await store.free_slot(ALICE, "l1")
    await store.free_slot(ALICE, "l1")  # freeing twice frees one slot
    assert (await store.get_slots(ALICE)).held == {"l2": "b@example.org"}
    assert await store.take_slot(ALICE, "l3", "c@example.org", None, 2)
    assert not await store.take_slot(ALICE, "l4", "d@example.org", None, 2)
    await store.free_slot(BOB, "l1")  # nor does freeing for a user never seen create one
    assert await store.get_slots(BOB) == UserSlots()


async def test_a_slot_is_taken_only_on_the_plan_it_was_counted_for(
    store: MongoRegistryStore,
) -> None:
    assert await store.set_plan(ALICE, "free", utc_now())
    assert not await store.take_slot(ALICE, "l1", ADDRESS, None, 5)
    assert not await store.take_slot(ALICE, "l1", ADDRESS, "basic", 5)
    assert await store.take_slot(ALICE, "l1", ADDRESS, "free", 1)
    assert not await store.take_slot(ALICE, "l2", "b@example.org", "free", 1)
    slots = await store.get_slots(ALICE)
    assert (slots.plan, slots.held) == ("free", {"l1": ADDRESS})


async def test_concurrent_slot_takers_never_exceed_the_limit(store: MongoRegistryStore) -> None:
    await store.set_plan(ALICE, "basic", utc_now())
    taken = await asyncio.gather(
        *(store.take_slot(ALICE, f"l{i}", f"{i}@example.org", "basic", 3) for i in range(8))
    )
    assert sum(taken) == 3
    assert len((await store.get_slots(ALICE)).held) == 3


async def test_an_older_plan_change_is_ignored(store: MongoRegistryStore) -> None:
    now = utc_now()
    assert await store.take_slot(ALICE, "l1", ADDRESS, None, 3)  # user exists, on no plan
    assert await store.set_plan(ALICE, "free", now)
    assert not await store.set_plan(ALICE, "organization", now - timedelta(minutes=1))
    assert not await store.set_plan(ALICE, "basic", now)
    slots = await store.get_slots(ALICE)
    assert (slots.plan, slots.held) == ("free", {"l1": ADDRESS})
    assert await store.set_plan(ALICE, "professional", now + timedelta(minutes=1))
    assert (await store.get_slots(ALICE)).plan == "professional"
    assert await store.set_plan(BOB, "basic", now - timedelta(days=1))  # a new user
    assert (await store.get_slots(BOB)).plan == "basic"
