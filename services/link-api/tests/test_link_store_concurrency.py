"""MongoLinkStore under concurrency and retention, against the session's real MongoDB-protocol
server (FerretDB 1.24 unless MONGODB_URI says otherwise) through a pool of 16 connections,
so concurrent writes of one document really are applied without isolation."""

import asyncio
import itertools
import random
import secrets
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from link_api.adapters.link_store import (
    IdempotencyRecord,
    MongoLinkStore,
    Retention,
    decode_step,
    encode_step,
    step_id,
)
from link_api.domain.link_status import FINAL_RANK, RANK, LinkProgress, LinkStatus, LinkView
from localinfra.mongo import mongo_backend
from localinfra.stack import LocalStack
from mailbox_link_contract.events import Failure, MailboxOwner, ProviderType, utc_now
from mailbox_link_contract.failures import FailureCode

OWNER = MailboxOwner(account_id="acme", user_id="u1")
POOL = 16
KEY = "acme\x1fu1\x1fa@example.org"  # an in-flight key: account, user, address


@pytest.fixture
async def pooled_client(local_stack: LocalStack) -> AsyncIterator[AsyncMongoClient[dict[str, Any]]]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        local_stack.endpoints.mongodb_uri, tz_aware=True, maxPoolSize=POOL
    )
    try:
        yield client
    finally:
        await client.close()


def _store(
    client: AsyncMongoClient[dict[str, Any]], retention: Retention | None = None, **kw: Any
) -> MongoLinkStore:
    return MongoLinkStore(client, f"concurrency-{secrets.token_hex(4)}", retention, **kw)


@pytest.fixture
async def store(pooled_client: AsyncMongoClient[dict[str, Any]]) -> MongoLinkStore:
    store = _store(pooled_client)
    await store.create_indexes()
    return store


def _link(link_id: str, at: datetime | None = None) -> LinkView:
    now = at or utc_now()
    return LinkView(
        link_id, OWNER, "a@example.org", ProviderType.IMAP, LinkStatus.PENDING, now, now
    )


def _events_of_one_link() -> list[LinkProgress]:
    """Every step a link may be told of, each as one event (same event_id when redelivered)."""
    now = utc_now()
    return [
        LinkProgress(LinkStatus.RESERVED, now),
        LinkProgress(
            LinkStatus.AUTHORIZATION_REQUIRED,
            now,
            authorize_url="https://accounts.google.com/o/oauth2/v2/auth?state=s1",
            authorization_expires_at=now + timedelta(minutes=10),
        ),
        LinkProgress(LinkStatus.VERIFIED, now),
        LinkProgress(LinkStatus.LINKED, now, mailbox_id="mb1"),
    ]


async def _watch(store: MongoLinkStore, link_id: str, done: asyncio.Event) -> list[int]:
    """Reads the link as GET does until `done`; returns the ranks it showed, in order."""
    seen: list[int] = []
    while not done.is_set():
        link = await store.get_link(link_id)
        assert link is not None
        seen.append(RANK[link.status])
        await asyncio.sleep(0)
    return seen


async def _deliver_concurrently(
    store: MongoLinkStore, link_ids: list[str], events: list[LinkProgress], copies: int
) -> list[list[int]]:
    """Applies every event to every link, each `copies` times, all at once in random order,
    while a reader per link watches; returns what each reader saw."""
    done = asyncio.Event()
    watchers = [asyncio.create_task(_watch(store, link_id, done)) for link_id in link_ids]
    writes = [
        store.advance_link(link_id, event)
        for link_id in link_ids
        for event in events
        for _ in range(copies)
    ]
    random.shuffle(writes)
    await asyncio.gather(*writes)
    done.set()
    return list(await asyncio.gather(*watchers))


async def test_concurrent_steps_end_at_the_highest_and_the_view_never_stays_behind(
    store: MongoLinkStore,
) -> None:
    link_ids = [f"link-{i}" for i in range(12)]
    for link_id in link_ids:
        await store.insert_link(_link(link_id))
    events = _events_of_one_link()
    seen = await _deliver_concurrently(store, link_ids, events, copies=3)
    for link_id in link_ids:
        link = await store.get_link(link_id)
        assert link is not None
        assert (link.status, link.mailbox_id) == (LinkStatus.LINKED, "mb1")
        assert (link.authorize_url, link.failure) == (None, None)
    # Once every writer has returned, the view shows the top step for good.
    for link_id in link_ids:
        again = await store.get_link(link_id)
        assert again is not None
        assert again.status is LinkStatus.LINKED
    went_back = [ranks for ranks in seen if any(b < a for a, b in itertools.pairwise(ranks))]
    print(f"readers that saw a lower status after a higher one: {len(went_back)}/{len(seen)}")


async def test_of_two_different_answers_the_first_recorded_stands(store: MongoLinkStore) -> None:
    link_ids = [f"link-{i}" for i in range(12)]
    for link_id in link_ids:
        await store.insert_link(_link(link_id))
    now = utc_now()
    rivals = [
        LinkProgress(LinkStatus.LINKED, now, mailbox_id="mb1"),
        LinkProgress(LinkStatus.FAILED, now, failure=Failure.of(FailureCode.TIMEOUT)),
        LinkProgress(LinkStatus.VERIFIED, now),
        LinkProgress(LinkStatus.RESERVED, now),
    ]
    await _deliver_concurrently(store, link_ids, rivals, copies=2)
    steps = store._steps  # what was recorded at the top rank decides; read it to compare
    for link_id in link_ids:
        link = await store.get_link(link_id)
        recorded = await steps.find_one({"_id": step_id(link_id, FINAL_RANK)})
        assert link is not None
        assert recorded is not None
        assert decode_step(recorded["step"]).status is link.status


async def test_concurrent_claims_give_exactly_one_holder_in_every_generation(
    store: MongoLinkStore,
) -> None:
    now = utc_now()
    later = now + timedelta(minutes=15)
    previous: str | None = None
    for generation in range(6):
        contenders = [f"g{generation}-link-{i}" for i in range(24)]
        holders = await asyncio.gather(
            *(store.claim_in_flight(KEY, contender, now, later) for contender in contenders)
        )
        assert len(set(holders)) == 1, holders
        [holder] = set(holders)
        assert holder in contenders
        assert holder != previous
        # The holder's link ends (as its final step records it); the next round takes over.
        await store.insert_link(_link(holder))
        ended = LinkProgress(LinkStatus.FAILED, now, failure=Failure.of(FailureCode.TIMEOUT))
        assert await store.advance_link(holder, ended) is not None
        previous = holder


async def test_a_live_claim_holds_against_concurrent_claims_and_an_expired_one_is_taken_once(
    store: MongoLinkStore,
) -> None:
    now = utc_now()
    key = "acme\x1fu1\x1fb@example.org"
    assert await store.claim_in_flight(key, "first", now, now + timedelta(minutes=15)) == "first"
    holders = await asyncio.gather(
        *(store.claim_in_flight(key, f"l{i}", now, now + timedelta(minutes=15)) for i in range(24))
    )
    assert set(holders) == {"first"}
    later = now + timedelta(minutes=16)  # "first" never got an answer: its claim expired
    holders = await asyncio.gather(
        *(
            store.claim_in_flight(key, f"m{i}", later, later + timedelta(minutes=15))
            for i in range(24)
        )
    )
    assert len(set(holders)) == 1
    assert holders[0].startswith("m")


async def test_a_stale_write_over_a_higher_step_is_repaired_by_its_writer(
    store: MongoLinkStore,
) -> None:
    await store.insert_link(_link("l1"))
    reserved = LinkProgress(LinkStatus.RESERVED, utc_now())
    assert await store.advance_link("l1", reserved) is not None
    linked = LinkProgress(LinkStatus.LINKED, utc_now(), mailbox_id="mb1")
    assert await store.advance_link("l1", linked) is not None
    # What a store without isolation may do: the reservation's write, read before 'linked'
    # was written, lands after it.
    await store._links.update_one({"_id": "l1"}, {"$set": {"step": encode_step(reserved)}})
    # The writer that landed it looks above its step and shows what is there (here: the same
    # event, redelivered, runs that writer's check again).
    assert await store.advance_link("l1", reserved) is None
    link = await store.get_link("l1")
    assert link is not None
    assert (link.status, link.mailbox_id) == (LinkStatus.LINKED, "mb1")


async def test_a_link_stored_before_steps_existed_still_reads_and_never_goes_back(
    store: MongoLinkStore,
) -> None:
    now = utc_now()
    legacy = {
        "_id": "old", "owner": OWNER.model_dump(), "address": "a@example.org",
        "provider": "imap", "status": "linked", "created_at": now, "updated_at": now,
        "failure": None, "mailbox_id": "mb-old", "already_linked": False,
    }  # fmt: skip
    await store._links.insert_one(legacy)
    late = LinkProgress(LinkStatus.RESERVED, utc_now())
    assert await store.advance_link("old", late) is None
    link = await store.get_link("old")
    assert link is not None
    assert (link.status, link.mailbox_id) == (LinkStatus.LINKED, "mb-old")
    # A claim stored before generations is generation 0 and still holds until it expires.
    key = "acme\x1fu1\x1fold@example.org"
    await store._in_flight.insert_one(
        {"_id": key, "link_id": "old-claim", "expires_at": now + timedelta(minutes=5)}
    )
    assert await store.claim_in_flight(key, "new", now, now + timedelta(minutes=15)) == "old-claim"


# Retention -------------------------------------------------------------------------------


async def test_ttl_indexes_are_used_where_the_store_has_them(
    pooled_client: AsyncMongoClient[dict[str, Any]],
) -> None:
    store = _store(pooled_client)
    with_ttl = await store.create_indexes()
    assert await store.create_indexes() is with_ttl  # again, as on every start: no error
    if not with_ttl:  # FerretDB 1.24 answers NotImplemented
        assert mongo_backend().startswith("ferretdb")
        return
    indexes = await store._links.index_information()
    assert indexes["ended_at_ttl"]["expireAfterSeconds"] == Retention().ended_links.total_seconds()


async def test_the_sweep_deletes_only_what_is_past_its_retention(
    pooled_client: AsyncMongoClient[dict[str, Any]],
) -> None:
    now = utc_now()
    retention = Retention(timedelta(hours=2), timedelta(hours=1), batch_size=2)
    store = _store(pooled_client, retention, clock=lambda: now)
    then = now - timedelta(hours=3)  # past both retentions
    failure = Failure.of(FailureCode.TIMEOUT)
    # Ended 3 h ago: goes, with its steps. Ended just now: stays. Open for 3 h: stays.
    for link_id, ended_at in (("gone-1", then), ("gone-2", then), ("gone-3", then), ("kept", now)):
        await store.insert_link(_link(link_id, then))
        await store.advance_link(link_id, LinkProgress(LinkStatus.FAILED, ended_at, failure))
    await store.insert_link(_link("open", then))
    await store.advance_link("open", LinkProgress(LinkStatus.RESERVED, now))
    # Claims: one taken 3 h ago, then its link ended and another took the key just now.
    key, soon = KEY, then + timedelta(minutes=15)
    assert await store.claim_in_flight(key, "gone-1", then, soon) == "gone-1"
    assert await store.claim_in_flight(key, "c1", then, soon) == "c1"
    await store.release_in_flight("c1")
    assert await store.claim_in_flight(key, "c2", now, now + timedelta(minutes=15)) == "c2"
    await store._idempotency.insert_many(
        [
            {"_id": "old-key", "link_id": "gone-1", "fingerprint": "f", "created_at": then},
            {"_id": "new-key", "link_id": "kept", "fingerprint": "f", "created_at": now},
        ]
    )

    deleted = await store.delete_expired(now)

    assert deleted["links"] == 3
    assert deleted["idempotency_keys"] == 1
    assert deleted["claims"] == 1  # c1's generation; the key's pointer and c2's stay
    for link_id in ("gone-1", "gone-2", "gone-3"):
        assert await store.get_link(link_id) is None
        assert await store._steps.find_one({"_id": step_id(link_id, FINAL_RANK)}) is None
    kept = await store.get_link("kept")
    assert kept is not None
    assert kept.status is LinkStatus.FAILED
    assert await store._steps.find_one({"_id": step_id("kept", FINAL_RANK)}) is not None
    open_link = await store.get_link("open")
    assert open_link is not None
    assert open_link.status is LinkStatus.RESERVED
    assert await store.find_idempotency_key("new-key") == IdempotencyRecord("kept", "f")
    assert await store._idempotency.find_one({"_id": "old-key"}) is None
    assert await store.claim_in_flight(key, "c3", now, now + timedelta(minutes=15)) == "c2"
    assert await store.delete_expired(now) == {
        "links": 0, "steps": 0, "claims": 0, "idempotency_keys": 0
    }  # fmt: skip


async def test_an_expired_idempotency_key_no_longer_replays(
    pooled_client: AsyncMongoClient[dict[str, Any]],
) -> None:
    clock = [utc_now()]
    retention = Retention(timedelta(days=8), timedelta(hours=24))
    store = _store(pooled_client, retention, clock=lambda: clock[0])
    first = IdempotencyRecord("l1", "f1")
    assert await store.remember_idempotency_key("scope", first) == first
    clock[0] += timedelta(hours=23)
    assert await store.find_idempotency_key("scope") == first
    assert await store.remember_idempotency_key("scope", IdempotencyRecord("l2", "f2")) == first
    clock[0] += timedelta(hours=2)
    assert await store.find_idempotency_key("scope") is None
    second = IdempotencyRecord("l3", "f3")
    assert await store.remember_idempotency_key("scope", second) == second
    assert await store.find_idempotency_key("scope") == second
