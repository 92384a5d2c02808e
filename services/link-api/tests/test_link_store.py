"""MongoLinkStore against the session's real MongoDB-protocol server."""

import asyncio
import secrets
from datetime import timedelta
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from link_api.adapters.link_store import (
    IdempotencyRecord,
    MongoLinkStore,
    Send,
    SendDecision,
)
from link_api.domain.link_status import LinkProgress, LinkStatus, LinkView
from mailbox_link_contract.events import AuthMethod, Failure, MailboxOwner, ProviderType, utc_now
from mailbox_link_contract.failures import FailureCode

OWNER = MailboxOwner(account_id="acme", user_id="u1")


@pytest.fixture
async def store(mongo_client: AsyncMongoClient[dict[str, Any]]) -> MongoLinkStore:
    store = MongoLinkStore(mongo_client, f"store-test-{secrets.token_hex(4)}")
    await store.create_indexes()
    return store


def _link(link_id: str) -> LinkView:
    now = utc_now()
    return LinkView(
        link_id, OWNER, "a@example.org", ProviderType.IMAP, LinkStatus.PENDING, now, now
    )


async def test_only_one_of_concurrent_claims_wins(store: MongoLinkStore) -> None:
    now = utc_now()
    holders = await asyncio.gather(
        *(
            store.claim_in_flight("k", f"link-{i}", now, now + timedelta(minutes=15))
            for i in range(8)
        )
    )
    assert len(set(holders)) == 1


async def test_an_expired_claim_is_taken_over_and_a_released_one_is_free(
    store: MongoLinkStore,
) -> None:
    now = utc_now()
    assert (
        await store.claim_in_flight(
            "k", "old", now - timedelta(hours=1), now - timedelta(minutes=1)
        )
        == "old"
    )
    assert await store.claim_in_flight("k", "new", now, now + timedelta(minutes=15)) == "new"
    await store.release_in_flight("new")
    assert await store.claim_in_flight("k", "newer", now, now + timedelta(minutes=15)) == "newer"


async def test_status_moves_only_from_the_allowed_statuses(store: MongoLinkStore) -> None:
    await store.insert_link(_link("l1"))
    failure = Failure.of(FailureCode.TIMEOUT)
    failed = await store.advance_link("l1", LinkProgress(LinkStatus.FAILED, utc_now(), failure))
    assert failed is not None
    assert failed.status is LinkStatus.FAILED
    assert failed.failure == failure
    again = await store.advance_link("l1", LinkProgress(LinkStatus.LINKED, utc_now()))
    assert again is None
    stored = await store.get_link("l1")
    assert stored is not None
    assert stored.status is LinkStatus.FAILED


async def test_an_oauth_link_keeps_its_sign_in_url_only_while_authorization_is_required(
    store: MongoLinkStore,
) -> None:
    now = utc_now()
    link = LinkView(
        "l1", OWNER, "a@gmail.com", ProviderType.GOOGLE, LinkStatus.PENDING, now, now,
        auth=AuthMethod.OAUTH,
    )  # fmt: skip
    await store.insert_link(link)
    expires_at = (now + timedelta(minutes=10)).replace(microsecond=0)  # MongoDB keeps ms
    waiting = await store.advance_link(
        "l1",
        LinkProgress(
            LinkStatus.AUTHORIZATION_REQUIRED,
            utc_now(),
            authorize_url="https://accounts.google.com/o/oauth2/v2/auth?state=s1",
            authorization_expires_at=expires_at,
        ),
    )
    assert waiting is not None
    assert (waiting.auth, waiting.provider) == (AuthMethod.OAUTH, ProviderType.GOOGLE)
    assert waiting.authorize_url == "https://accounts.google.com/o/oauth2/v2/auth?state=s1"
    assert waiting.authorization_expires_at == expires_at
    verified = await store.advance_link("l1", LinkProgress(LinkStatus.VERIFIED, utc_now()))
    assert verified is not None
    assert (verified.authorize_url, verified.authorization_expires_at) == (None, None)
    assert verified.auth is AuthMethod.OAUTH


async def test_an_idempotency_key_keeps_its_first_link(store: MongoLinkStore) -> None:
    first = await store.remember_idempotency_key("scope", IdempotencyRecord("l1", "f1"))
    second = await store.remember_idempotency_key("scope", IdempotencyRecord("l2", "f2"))
    assert first == second == IdempotencyRecord("l1", "f1")
    assert await store.find_idempotency_key("scope") == first


async def test_a_link_is_stored_with_its_request_and_listed_unsent_until_sent(
    store: MongoLinkStore,
) -> None:
    link = _link("l1")
    await store.insert_link(link, '{"event": 1}')
    await store.insert_link(_link("l1"), '{"event": 2}')  # a retry carrying it on keeps it
    assert await store.get_outbox("l1") == '{"event": 1}'
    assert await store.get_link("l1") is not None
    later = utc_now() + timedelta(seconds=1)
    assert [entry.link_id for entry in await store.unsent(later, 10)] == ["l1"]
    assert await store.unsent(link.created_at - timedelta(seconds=1), 10) == []
    await store.mark_sent("l1")
    assert await store.unsent(later, 10) == []


async def test_of_concurrent_send_decisions_exactly_one_stands(store: MongoLinkStore) -> None:
    wanted = [SendDecision(Send.PUBLISH), SendDecision(Send.FAIL)] * 6
    decided = await asyncio.gather(*(store.decide_send("l1", w) for w in wanted))
    assert len(set(decided)) == 1
    assert await store.send_decision("l1") == decided[0]
    assert await store.send_decision("l2") is None


async def test_an_ended_link_keeps_no_request_and_a_dropped_one_is_gone(
    store: MongoLinkStore,
) -> None:
    await store.insert_link(_link("l1"), '{"sealed": "..."}')
    failure = Failure.of(FailureCode.REQUEST_NOT_SENT)
    assert await store.advance_link("l1", LinkProgress(LinkStatus.FAILED, utc_now(), failure))
    assert await store.get_outbox("l1") is None
    await store.insert_link(_link("l2"), "{}")
    await store.delete_link("l2")
    assert await store.get_link("l2") is None
    listed = await store.unsent(utc_now() + timedelta(seconds=1), 10)
    assert [entry.link_id for entry in listed] == ["l1"]  # l1 ended; only the relay unlists it
