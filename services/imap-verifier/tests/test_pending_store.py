"""The pending-request state machine: handlers and MongoPendingStore against the session's real
MongoDB-protocol server. The request and its reservation in either order, a rejection, a
redelivery and many concurrent starts each log in at most once."""

import asyncio
import secrets
import ssl
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from typing import Any

import pytest
from pydantic import SecretStr
from pymongo import AsyncMongoClient
from verifier_fakes import NO_RELAY

from imap_verifier.adapters.pending_store import MongoPendingStore
from imap_verifier.handlers import (
    when_link_rejected_forget,
    when_link_requested_remember,
    when_link_reserved_start,
)
from imap_verifier.ports import VerifierDeps
from localinfra.stack import LocalStack
from mailbox_link_contract.events import (
    Authority,
    Failure,
    LinkRejected,
    LinkRejectedData,
    LinkRequested,
    LinkRequestedData,
    LinkReserved,
    LinkReservedData,
    MailboxOwner,
    MailboxVerified,
    ServerSettings,
    utc_now,
)
from mailbox_link_contract.failures import FailureCode
from mailbox_link_shared.crypto import SecretBox, generate_key
from mailbox_link_shared.mail_probes import Endpoint
from mailbox_link_shared.network_policy import IPNetwork
from mailbox_link_shared.publishing import RecordingPublisher

BOX = SecretBox({"k1": SecretStr(generate_key())}, "k1")
OWNER = MailboxOwner(account_id="acme", user_id="u1")


class CountingNetwork:
    def __init__(self) -> None:
        self.logins = 0

    async def resolve(self, s: ServerSettings, a: Sequence[IPNetwork], t: float) -> Endpoint:
        return Endpoint(s.host, "192.0.2.10", s.port, s.security)

    async def probe(self, e: Endpoint, u: str, p: str, tls: ssl.SSLContext, t: float) -> None:
        self.logins += 1


@pytest.fixture
async def store(local_stack: LocalStack) -> AsyncIterator[MongoPendingStore]:
    uri = local_stack.endpoints.mongodb_uri
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri, tz_aware=True, maxPoolSize=16)
    name = f"verifier-test-{secrets.token_hex(4)}"
    store = MongoPendingStore(client, name, timedelta(minutes=20))
    await store.create_indexes()
    yield store
    await client.drop_database(name)
    await client.close()


def _deps(store: MongoPendingStore, network: CountingNetwork) -> VerifierDeps:
    return VerifierDeps(
        publisher=RecordingPublisher(),
        secret_box=BOX,
        resolve=network.resolve,
        probe_imap=network.probe,
        probe_smtp=network.probe,
        tls=ssl.create_default_context(),
        allowlist=(),
        timeout=5.0,
        store=store,
        proof=NO_RELAY,
    )


def _events(link_id: str) -> tuple[LinkRequested, LinkReserved, LinkRejected]:
    address = f"{link_id}@example.org"
    server = ServerSettings(host="mail.example.org", port=993, security="ssl", username=address)
    sealed = BOX.seal('{"imap_password": "p", "smtp_password": "p"}', address)
    requested = LinkRequested(
        correlation_id=link_id,
        producer="test",
        data=LinkRequestedData(
            link_id=link_id, owner=OWNER, address=address, provider="imap", imap=server,
            smtp=server, credentials=sealed, authority=Authority.SAME_DOMAIN,
        ),
    )  # fmt: skip
    reserved = LinkReserved(
        correlation_id=link_id,
        producer="test",
        data=LinkReservedData(
            link_id=link_id, owner=OWNER, address=address,
            expires_at=utc_now() + timedelta(minutes=15), provider="imap",
        ),
    )  # fmt: skip
    rejected = LinkRejected(
        correlation_id=link_id,
        producer="test",
        data=LinkRejectedData(
            link_id=link_id, owner=OWNER, address=address,
            failure=Failure.of(FailureCode.PLAN_LIMIT_REACHED),
        ),
    )  # fmt: skip
    return requested, reserved, rejected


def _verified(deps: VerifierDeps) -> list[str]:
    assert isinstance(deps.publisher, RecordingPublisher)
    return [e.data.link_id for e in deps.publisher.events if isinstance(e, MailboxVerified)]


@pytest.mark.parametrize("reservation_first", [False, True])
async def test_verification_starts_once_both_are_in_whichever_came_first(
    store: MongoPendingStore, reservation_first: bool
) -> None:
    network = CountingNetwork()
    deps = _deps(store, network)
    requested, reserved, _ = _events("l-order")
    if reservation_first:
        await when_link_reserved_start(reserved, deps)
    else:
        await when_link_requested_remember(requested, deps)
    assert network.logins == 0
    assert _verified(deps) == []
    if reservation_first:
        await when_link_requested_remember(requested, deps)
    else:
        await when_link_reserved_start(reserved, deps)
    assert network.logins == 2  # IMAP and SMTP, once
    assert _verified(deps) == ["l-order"]
    # Redelivered, both: nothing happens again.
    await when_link_requested_remember(requested, deps)
    await when_link_reserved_start(reserved, deps)
    assert network.logins == 2
    assert _verified(deps) == ["l-order"]


@pytest.mark.parametrize("rejection_first", [False, True])
async def test_a_rejected_link_is_never_logged_in_to(
    store: MongoPendingStore, rejection_first: bool
) -> None:
    network = CountingNetwork()
    deps = _deps(store, network)
    requested, reserved, rejected = _events("l-rejected")
    if rejection_first:
        await when_link_rejected_forget(rejected, deps)
        await when_link_requested_remember(requested, deps)
    else:
        await when_link_requested_remember(requested, deps)
        await when_link_rejected_forget(rejected, deps)
    await when_link_reserved_start(reserved, deps)
    assert network.logins == 0
    assert _verified(deps) == []


async def test_many_concurrent_deliveries_on_many_connections_start_one_login(
    store: MongoPendingStore,
) -> None:
    # Two replicas, redeliveries: 40 handlers of the pair at once, 20 links.
    network = CountingNetwork()
    deps = _deps(store, network)
    pairs = [_events(f"l-race-{n}") for n in range(20)]
    await asyncio.gather(
        *(
            handler
            for requested, reserved, _ in pairs
            for _ in range(2)
            for handler in (
                when_link_requested_remember(requested, deps),
                when_link_reserved_start(reserved, deps),
            )
        )
    )
    assert sorted(_verified(deps)) == sorted(f"l-race-{n}" for n in range(20))
    assert network.logins == 40


async def test_the_sweep_deletes_only_what_is_past_its_expiry(store: MongoPendingStore) -> None:
    # FerretDB has no TTL indexes: without the sweep an abandoned request (sealed credentials
    # included) would stay for ever.
    long_ago = utc_now() - timedelta(hours=1)
    await store.save_request("l-old", "{}", long_ago)
    await store.save_reservation("l-old", long_ago, long_ago)
    await store.save_request("l-new", "{}", utc_now())
    deleted = await store.delete_expired(utc_now())
    assert deleted == {"pending_verifications": 1, "reservations": 1, "verification_starts": 0}
    await store.save_reservation("l-new", utc_now() + timedelta(minutes=5), utc_now())
    assert await store.ready_request("l-new", utc_now()) == "{}"
    await store.save_reservation("l-old", utc_now() + timedelta(minutes=5), utc_now())
    assert await store.ready_request("l-old", utc_now()) is None  # its request is gone
