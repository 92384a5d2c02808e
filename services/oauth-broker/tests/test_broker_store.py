"""MongoBrokerStore against the session's real MongoDB-protocol server, 16 connections."""

import asyncio
import secrets
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from pydantic import SecretStr
from pymongo import AsyncMongoClient

from localinfra.stack import LocalStack
from mailbox_link_contract.events import MailboxOwner, ProviderType, ServerSettings, utc_now
from mailbox_link_shared.crypto import SecretBox, generate_key
from oauth_broker.adapters.broker_store import MongoBrokerStore
from oauth_broker.domain.grants import GrantStatus, StoredGrant
from oauth_broker.domain.sessions import AuthorizationSession, LinkToAuthorize

SERVER = ServerSettings(host="imap.gmail.com", port=993, security="ssl", username="a@gmail.com")


@pytest.fixture
async def store(local_stack: LocalStack) -> AsyncIterator[MongoBrokerStore]:
    uri = local_stack.endpoints.mongodb_uri
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri, tz_aware=True, maxPoolSize=16)
    name = f"broker-test-{secrets.token_hex(4)}"
    store = MongoBrokerStore(client, name)
    await store.create_indexes()
    yield store
    await client.drop_database(name)
    await client.close()


async def test_a_request_and_its_reservation_stored_at_the_same_moment_are_both_kept(
    store: MongoBrokerStore,
) -> None:
    # The two come from two topics and are handled concurrently, in either order.
    now = utc_now()
    box = SecretBox({"k": SecretStr(generate_key())}, "k")
    owner = MailboxOwner(account_id="acme", user_id="alice")
    links = [
        LinkToAuthorize(f"l{n}", owner, f"a{n}@gmail.com", ProviderType.GOOGLE, SERVER, SERVER)
        for n in range(40)
    ]

    async def request(link: LinkToAuthorize) -> None:
        session, fresh = AuthorizationSession.open(link, now, timedelta(minutes=10))
        await store.save_request(session, box.seal(fresh.to_json(), context=link.link_id))

    async def reserve(link: LinkToAuthorize) -> None:
        await store.mark_reserved(link.link_id, now + timedelta(minutes=15), now)

    await asyncio.gather(*(f(link) for link in links for f in (request, reserve)))
    found = await asyncio.gather(*(store.get_session(link.link_id) for link in links))
    assert all(f is not None and f[0].reserved for f in found)


async def test_an_oidc_sessions_provider_and_its_grants_subject_are_kept(
    store: MongoBrokerStore,
) -> None:
    now = utc_now()
    box = SecretBox({"k": SecretStr(generate_key())}, "k")
    owner = MailboxOwner(account_id="acme", user_id="alice")
    link = LinkToAuthorize(
        "oidc-1", owner, "a@corp.example", ProviderType.OIDC, SERVER, SERVER, "corp"
    )
    session, fresh = AuthorizationSession.open(link, now, timedelta(minutes=10))
    await store.save_request(session, box.seal(fresh.to_json(), context=link.link_id))
    grant = StoredGrant(
        "oidc-1", owner, link.address, ProviderType.OIDC, GrantStatus.VERIFIED, now,
        box.seal("{}", context=link.address), now, oidc_provider="corp", subject="sub-1",
    )  # fmt: skip
    await store.save_grant(grant)

    found = await store.get_session("oidc-1")
    kept = await store.get_grant("oidc-1")

    assert found is not None
    assert found[0].link.provider_key == "oidc:corp"
    assert kept is not None
    assert (kept.provider_key, kept.subject) == ("oidc:corp", "sub-1")


async def test_a_reconnect_is_noted_once_and_its_tokens_become_the_mailboxs_grant(
    store: MongoBrokerStore,
) -> None:
    now = utc_now()
    box = SecretBox({"k": SecretStr(generate_key())}, "k")
    owner = MailboxOwner(account_id="acme", user_id="alice")

    def grant(link_id: str, status: GrantStatus, token: str, mailbox_id: str | None) -> StoredGrant:
        sealed = box.seal(token, context="a@gmail.com")
        return StoredGrant(
            link_id, owner, "a@gmail.com", ProviderType.GOOGLE, status,
            now + timedelta(hours=1), sealed, verified_at=now, mailbox_id=mailbox_id,
        )  # fmt: skip

    await store.note_reconnect("r1", "m1", now)
    await store.note_reconnect("r1", "m-other", now)  # a redelivery changes nothing
    assert await store.reconnect_of("r1") == "m1"
    assert await store.reconnect_of("l1") is None
    await store.save_grant(grant("l1", GrantStatus.RECONNECT_REQUIRED, "old", "m1"))
    new = grant("r1", GrantStatus.VERIFIED, "new", None)
    await store.save_grant(new)
    found = await store.grant_of_mailbox("m1")
    assert found is not None
    assert found.link_id == "l1"
    assert await store.adopt_grant("l1", new)
    adopted = await store.get_grant("l1")
    assert adopted is not None
    assert (adopted.status, adopted.mailbox_id) == (GrantStatus.ACTIVE, "m1")
    assert box.open(adopted.sealed, context="a@gmail.com") == "new"
    assert [g.link_id for g in await store.grants_due(now + timedelta(hours=2), now)] == ["l1"]
    await store.forget_reconnect("r1")
    assert await store.reconnect_of("r1") is None
    assert not await store.adopt_grant("gone", new)
