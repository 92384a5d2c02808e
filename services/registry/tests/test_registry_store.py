"""MongoRegistryStore, and the decision protocol on it, against the session's real
MongoDB-protocol server with a pool of 16 connections."""

import asyncio
import secrets
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from pydantic import SecretStr
from pymongo import AsyncMongoClient

from localinfra.stack import LocalStack
from mailbox_link_contract.events import (
    AuthMethod,
    Authority,
    LinkRejected,
    MailboxLinked,
    MailboxOwner,
    ProviderType,
    ServerSettings,
    utc_now,
)
from mailbox_link_shared.crypto import SecretBox, generate_key
from mailbox_link_shared.publishing import RecordingPublisher
from mailbox_link_shared.routing import EventRouter
from registry import handlers
from registry.adapters.registry_store import (
    Claim,
    MongoRegistryStore,
    PendingEntry,
    UserPlan,
    Verification,
)
from registry.domain.links import Decision, LinkRecord, LinkState, MailboxDetails, Progress
from registry.domain.plans import DEFAULT_PLANS, PlanTable
from registry.handlers import RegistryDeps
from registry.user_plans import apply_plan, current_plan
from registry_fakes import requested_event, verified_event

ALICE = MailboxOwner(account_id="acme", user_id="alice")
ADDRESS = "box@example.org"
POOL = 16
OUTBOX: dict[str, Any] = {
    "event_id": "00000000-0000-0000-0000-000000000001",
    "type": "LinkReserved",
    "data": {"link_id": "l1", "owner": {"account_id": "acme", "user_id": "alice"}},
}
SERVER = ServerSettings(host="imap.example.org", port=993, security="ssl", username=ADDRESS)


@pytest.fixture
async def client(local_stack: LocalStack) -> AsyncIterator[AsyncMongoClient[dict[str, Any]]]:
    uri = local_stack.endpoints.mongodb_uri
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri, tz_aware=True, maxPoolSize=POOL)
    try:
        yield mongo
    finally:
        await mongo.close()


@pytest.fixture
async def store(client: AsyncMongoClient[dict[str, Any]]) -> AsyncIterator[MongoRegistryStore]:
    name = f"registry-test-{secrets.token_hex(4)}"
    store = MongoRegistryStore(client, name)
    await store.create_indexes()
    yield store
    await client.drop_database(name)


def _record(link_id: str, progress: Progress | None = None) -> LinkRecord:
    return LinkRecord(
        link_id=link_id,
        owner=ALICE,
        address=ADDRESS,
        provider=ProviderType.IMAP,
        expires_at=utc_now() + timedelta(minutes=15),
        progress=progress or Progress(),
    )


def _decision(step: int, state: LinkState = LinkState.RESERVED) -> Decision:
    mailbox = MailboxDetails(
        "mb1", SERVER, SERVER, utc_now(), AuthMethod.PASSWORD, authority=Authority.SAME_DOMAIN
    )
    return Decision(step, state, utc_now(), OUTBOX, mailbox, ("mailbox:box@example.org#0",))


# --- what decides: inserts under unique ids --------------------------------------------------


async def test_adding_a_link_twice_keeps_the_first_request(store: MongoRegistryStore) -> None:
    first = _record("l1")
    assert await store.add_link(first) is None
    later = _record("l1", Progress(step=2, state=LinkState.LINKED))
    existing = await store.add_link(later)
    assert existing is not None
    assert existing.progress == Progress()
    assert existing.expires_at == first.expires_at.replace(
        microsecond=first.expires_at.microsecond // 1000 * 1000
    )


async def test_a_decision_is_stored_once_per_step_and_reads_back_whole(
    store: MongoRegistryStore,
) -> None:
    decision = _decision(1)
    assert await store.add_decision("l1", decision)
    assert not await store.add_decision("l1", _decision(1, LinkState.REJECTED))
    stored = await store.get_decision("l1", 1)
    assert stored is not None
    assert (stored.state, stored.outbox, stored.claims) == (
        LinkState.RESERVED,
        OUTBOX,
        decision.claims,
    )
    assert stored.mailbox is not None
    assert stored.mailbox.imap == SERVER
    assert stored.mailbox.authority is Authority.SAME_DOMAIN
    assert await store.get_decision("l1", 2) is None


async def test_of_concurrent_decisions_from_one_step_exactly_one_is_stored(
    store: MongoRegistryStore,
) -> None:
    # The store does not isolate concurrent updates of one document; unique inserts it does.
    results = await asyncio.gather(
        *(store.add_decision("l1", _decision(2, LinkState.LINKED)) for _ in range(100))
    )
    assert results.count(True) == 1


async def test_of_concurrent_claims_of_one_generation_exactly_one_wins(
    store: MongoRegistryStore,
) -> None:
    results = await asyncio.gather(
        *(store.add_claim(Claim("mailbox:x@example.org", 3, f"l{n}")) for n in range(100))
    )
    assert results.count(True) == 1
    [winner] = [n for n, won in enumerate(results) if won]
    claim = await store.get_claim("mailbox:x@example.org", 3)
    assert claim is not None
    assert claim.link_id == f"l{winner}"


# --- hints and the rest ----------------------------------------------------------------------


async def test_progress_and_the_latest_claim_are_hints_written_over(
    store: MongoRegistryStore,
) -> None:
    await store.add_link(_record("l1"))
    progress = Progress(step=2, state=LinkState.LINKED, announced=2)
    await store.note_progress("l1", progress, utc_now())
    stored = await store.get_link("l1")
    assert stored is not None
    assert stored.progress == progress
    await store.add_claim(Claim("slot:x:0", 0, "l1"))
    await store.note_latest_claim("slot:x:0", 4)
    head = await store.get_claim("slot:x:0", 0)
    assert head is not None
    assert (head.link_id, head.latest) == ("l1", 4)


async def test_only_links_ended_and_announced_before_the_cutoff_are_found_for_retention(
    store: MongoRegistryStore,
) -> None:
    now = utc_now()
    for link_id in ("ended", "linked", "recent"):
        await store.add_link(_record(link_id))
    await store.note_progress("ended", Progress(2, LinkState.REJECTED, 2), now - timedelta(days=9))
    await store.note_progress("linked", Progress(2, LinkState.LINKED, 2), now - timedelta(days=9))
    await store.note_progress("recent", Progress(1, LinkState.REJECTED, 1), now)
    found = await store.ended_before(now - timedelta(days=8), 10)
    assert [r.link_id for r in found] == ["ended"]


async def test_forgetting_a_link_deletes_its_documents(store: MongoRegistryStore) -> None:
    await store.add_link(_record("l1"))
    await store.add_decision("l1", _decision(1))
    await store.add_decision("l1", _decision(2, LinkState.REJECTED))
    await store.add_verification("l1", Verification(SERVER, SERVER, AuthMethod.PASSWORD, None))
    await store.open_pending(PendingEntry("l1/1", "l1", utc_now()))
    await store.forget_link("l1", 2)
    assert await store.get_link("l1") is None
    assert await store.get_decision("l1", 1) is None
    assert await store.get_decision("l1", 2) is None
    assert await store.get_verification("l1") is None
    assert await store.pending(10) == []


async def test_a_reconnect_reads_back_from_decisions_progress_and_retention(
    store: MongoRegistryStore,
) -> None:
    # The reconnect link a decision names, and the one whose verification a mailbox uses.
    mailbox = MailboxDetails("m1", SERVER, SERVER, utc_now(), verified_by="r1")
    decision = Decision(3, LinkState.LINKED, utc_now(), mailbox=mailbox, reconnects="l0")
    assert await store.add_decision("r1", decision)
    stored = await store.get_decision("r1", 3)
    assert stored is not None
    assert stored.reconnects == "l0"
    assert stored.mailbox is not None
    assert stored.mailbox.verified_by == "r1"
    await store.add_link(_record("r1"))
    progress = Progress(2, LinkState.RECONNECTING, 2, ("reconnect:l0#0",), reconnects="l0")
    await store.note_progress("r1", progress, utc_now())
    link = await store.get_link("r1")
    assert link is not None
    assert link.progress == progress
    # A reconnected link's verification is its mailbox's: retention keeps it.
    await store.add_verification("r1", Verification(SERVER, SERVER, AuthMethod.PASSWORD, None))
    await store.forget_link("r1", 3, keep_verification=True)
    assert await store.get_link("r1") is None
    assert await store.get_verification("r1") is not None


async def test_a_verification_keeps_its_sealed_credentials_until_dropped(
    store: MongoRegistryStore,
) -> None:
    sealed = SecretBox({"k": SecretStr(generate_key())}, "k").seal("{}", ADDRESS)
    verification = Verification(
        SERVER, SERVER, AuthMethod.PASSWORD, sealed, Authority.PUBLISHED_SETTINGS
    )
    await store.add_verification("l1", verification)
    await store.add_verification("l1", Verification(SERVER, SERVER, AuthMethod.OAUTH, None))
    assert await store.get_verification("l1") == verification
    await store.drop_verification("l1")
    assert await store.get_verification("l1") is None


async def test_a_plan_version_is_stored_once_and_the_latest_is_a_hint(
    store: MongoRegistryStore,
) -> None:
    now = utc_now().replace(microsecond=0)
    assert await store.add_plan_version(ALICE, UserPlan("organization", now, 15, version=0))
    assert not await store.add_plan_version(ALICE, UserPlan("free", now, 1, version=0))
    assert await store.add_plan_version(ALICE, UserPlan("free", now, 15, version=1))
    await store.note_latest_plan(ALICE, 1)
    head = await store.get_plan_version(ALICE, 0)
    assert head is not None
    assert (head.plan, head.latest) == ("organization", 1)
    latest = await store.get_plan_version(ALICE, 1)
    assert latest is not None
    assert (latest.plan, latest.max_limit, latest.version) == ("free", 15, 1)
    assert await store.get_plan_version(ALICE, 2) is None


async def test_of_concurrent_plan_changes_the_newest_stands(store: MongoRegistryStore) -> None:
    now = utc_now().replace(microsecond=0)
    changes = [(f"plan-{n}", now + timedelta(seconds=n)) for n in range(20)]
    await asyncio.gather(*(apply_plan(ALICE, p, at, 3, store) for p, at in reversed(changes)))
    plan = await current_plan(ALICE, store)
    assert (plan.plan, plan.changed_at) == changes[-1]


async def test_slot_hints_and_pending_entries(store: MongoRegistryStore) -> None:
    await store.note_slot(ALICE, 0, "l1")
    await store.note_slot(ALICE, 2, "l2")
    assert await store.get_slot_hints(ALICE) == {0: "l1", 2: "l2"}
    opened = utc_now()
    await store.open_pending(PendingEntry("l1/1", "l1", opened))
    await store.open_pending(PendingEntry("l1/1", "l1", opened + timedelta(hours=1)))
    [entry] = await store.pending(10)
    assert (entry.entry_id, entry.link_id) == ("l1/1", "l1")
    assert abs(entry.opened_at - opened) < timedelta(milliseconds=1)
    await store.close_pending("l1/1")
    assert await store.pending(10) == []


# --- the protocol on the real store, many connections at once --------------------------------


async def test_on_sixteen_connections_one_of_two_hundred_requests_for_an_address_links_it(
    store: MongoRegistryStore,
) -> None:
    deps = RegistryDeps(store, RecordingPublisher(), PlanTable(DEFAULT_PLANS, "basic"))
    owners = [MailboxOwner(account_id=f"a{n}", user_id="u") for n in range(200)]
    requests = [requested_event(o, f"l{n}", "contested@example.org") for n, o in enumerate(owners)]
    events = [
        e
        for r in requests
        for e in (r, verified_event(r.data.owner, r.data.link_id, r.data.address))
    ]
    router = EventRouter(handlers.EVENT_HANDLERS, deps)
    await asyncio.gather(*(router.handle(e) for e in events))

    assert isinstance(deps.publisher, RecordingPublisher)
    finals: dict[str, set[str]] = {}
    linked = set()
    for event in deps.publisher.events:
        if isinstance(event, MailboxLinked | LinkRejected):
            finals.setdefault(event.correlation_id, set()).add(str(event.event_id))
            if isinstance(event, MailboxLinked):
                linked.add(event.correlation_id)
    assert len(finals) == 200
    assert all(len(ids) == 1 for ids in finals.values())
    assert len(linked) == 1
    owner = await handlers.find_owner("contested@example.org", deps)
    assert owner is not None
    assert {owner.link_id} == linked
