"""How many store round trips each thing link-api does costs, counted on the wire (pymongo's
command monitoring) against the real store. DESIGN.md lists them beside the earlier counts;
a change that adds one fails here."""

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from pydantic import SecretStr
from pymongo import AsyncMongoClient, monitoring

from link_api import handlers
from link_api.adapters.link_store import MongoLinkStore
from link_api.domain.link_request import LinkRequest
from link_api.handlers import LinkApiDeps
from localinfra.stack import LocalStack
from mailbox_link_contract.events import (
    AuthorizationRequired,
    AuthorizationRequiredData,
    Envelope,
    Failure,
    LinkRejected,
    LinkRejectedData,
    LinkReserved,
    LinkReservedData,
    MailboxLinked,
    MailboxLinkedData,
    MailboxOwner,
    MailboxVerified,
    MailboxVerifiedData,
    ProviderType,
    ServerSettings,
    utc_now,
)
from mailbox_link_contract.failures import FailureCode
from mailbox_link_shared.credentials import MailboxCredentials
from mailbox_link_shared.crypto import SecretBox, generate_key
from mailbox_link_shared.publishing import RecordingPublisher

OWNER = MailboxOwner(account_id="acme", user_id="u1")
ADDRESS = "alice@example.org"
BOX = SecretBox({"k1": SecretStr(generate_key())}, "k1")
_NOT_ROUND_TRIPS = {"hello", "ismaster", "isMaster", "ping", "endSessions", "buildInfo"}


@dataclass
class Commands(monitoring.CommandListener):
    """Names of the commands sent, in order (connection handshakes left out)."""

    sent: list[str] = field(default_factory=list)

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name not in _NOT_ROUND_TRIPS:
            self.sent.append(event.command_name)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass

    def take(self) -> list[str]:
        sent, self.sent = self.sent, []
        return sent


@dataclass
class Counted:
    deps: LinkApiDeps
    commands: Commands


@pytest.fixture
async def counted(local_stack: LocalStack) -> AsyncIterator[Counted]:
    commands = Commands()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        local_stack.endpoints.mongodb_uri, tz_aware=True, maxPoolSize=16, event_listeners=[commands]
    )
    store = MongoLinkStore(client, f"round-trips-{secrets.token_hex(4)}")
    await store.create_indexes()
    await client.admin.command("ping")
    commands.take()
    try:
        yield Counted(
            LinkApiDeps(store, RecordingPublisher(), BOX, timedelta(minutes=15)), commands
        )
    finally:
        await client.close()


def _request(address: str = ADDRESS) -> LinkRequest:
    server = ServerSettings(host="imap.example.org", port=993, security="ssl", username=address)
    credentials = MailboxCredentials("pw", "pw")
    return LinkRequest(OWNER, address, ProviderType.IMAP, server, server, credentials)


async def _request_link(counted: Counted, key: str | None = None, address: str = ADDRESS) -> str:
    return (await handlers.request_link(_request(address), key, counted.deps)).link.link_id


async def _handle(counted: Counted, event: Envelope) -> None:
    if isinstance(event, MailboxVerified):
        await handlers.when_mailbox_verified_update_status(event, counted.deps)
    elif isinstance(event, AuthorizationRequired):
        await handlers.when_authorization_required_show_url(event, counted.deps)
    else:
        assert isinstance(event, LinkReserved | MailboxLinked | LinkRejected)
        await handlers.when_registry_answer_update_status(event, counted.deps)


async def test_a_link_request_costs_five_round_trips_and_a_status_read_one(
    counted: Counted,
) -> None:
    link_id = await _request_link(counted)
    # Listed unsent, the view with its request, the claim, the send decision, unlisted.
    assert counted.commands.take() == ["insert", "insert", "findAndModify", "insert", "delete"]
    assert await handlers.get_link(OWNER, link_id, counted.deps) is not None
    assert counted.commands.take() == ["find"]
    # The same request again while the first is under way: answered with the first link.
    assert await _request_link(counted) == link_id
    # Listed and stored; the claim's pointer; has the holder ended? has it been decided? Then
    # ours is decided a duplicate, its claims ended (none), it is deleted and unlisted.
    assert counted.commands.take() == [
        *["insert", "insert", "findAndModify", "find", "find"],
        *["insert", "insert", "delete", "delete", "find"],
    ]


async def test_each_event_costs_at_most_three_round_trips(counted: Counted) -> None:
    link_id = await _request_link(counted)
    counted.commands.take()
    verified = _verified(link_id)
    # Record the step, raise the view, look one rank up.
    await _handle(counted, _reserved(link_id))
    assert counted.commands.take() == ["insert", "findAndModify", "find"]
    await _handle(counted, verified)
    assert counted.commands.take() == ["insert", "findAndModify", "find"]
    # The end has nothing above it, and ends the in-flight claim by being recorded.
    await _handle(counted, _linked(link_id))
    assert counted.commands.take() == ["insert", "findAndModify"]
    # A late event: its rank is taken by another event's step; nothing more to do.
    await _handle(counted, _reserved(link_id))
    assert counted.commands.take() == ["insert", "find"]
    # A redelivered one re-runs its writer's steps (here the view already shows more).
    await _handle(counted, verified)
    assert counted.commands.take() == ["insert", "find", "findAndModify"]


async def test_an_oauth_links_sign_in_url_costs_what_any_step_does(counted: Counted) -> None:
    link_id = await _request_link(counted)
    counted.commands.take()
    await _handle(counted, _authorization_required(link_id))
    assert counted.commands.take() == ["insert", "findAndModify", "find"]
    await _handle(counted, _rejected(link_id))
    assert counted.commands.take() == ["insert", "findAndModify"]


async def test_a_mailbox_requested_again_after_its_link_ended(counted: Counted) -> None:
    first = await _request_link(counted)
    await _handle(counted, _rejected(first))
    counted.commands.take()
    assert await _request_link(counted) != first
    # Listed, the view; the pointer read (the claim's upsert); has the holder's link ended?;
    # the next generation's claim; the pointer moved on; the send decision; unlisted.
    assert counted.commands.take() == [
        *["insert", "insert", "findAndModify", "find", "insert", "update", "insert", "delete"]
    ]


async def test_an_idempotency_key_costs_one_round_trip_and_a_replay_three_or_four(
    counted: Counted,
) -> None:
    link_id = await _request_link(counted, key="key-1")
    # The key bound to the new link first, then as without a key.
    assert counted.commands.take() == [
        *["insert", "insert", "insert", "findAndModify", "insert", "delete"]
    ]
    # The key's insert refused, the key, the link; still pending: its send decision.
    assert await _request_link(counted, key="key-1") == link_id
    assert counted.commands.take() == ["insert", "find", "find", "find"]
    await _handle(counted, _rejected(link_id))
    counted.commands.take()
    assert await _request_link(counted, key="key-1") == link_id
    assert counted.commands.take() == ["insert", "find", "find"]


def _reserved(link_id: str) -> LinkReserved:
    data = LinkReservedData(
        link_id=link_id, owner=OWNER, address=ADDRESS, expires_at=utc_now() + timedelta(minutes=15)
    )
    return LinkReserved(correlation_id=link_id, producer="registry", data=data)


def _verified(link_id: str) -> MailboxVerified:
    request = _request()
    data = MailboxVerifiedData(
        link_id=link_id,
        owner=OWNER,
        address=ADDRESS,
        provider=request.provider,
        imap=request.imap,
        smtp=request.smtp,
        credentials=BOX.seal("{}", ADDRESS),
    )
    return MailboxVerified(correlation_id=link_id, producer="imap-verifier", data=data)


def _linked(link_id: str) -> MailboxLinked:
    data = MailboxLinkedData(
        link_id=link_id, mailbox_id="mb1", owner=OWNER, address=ADDRESS, provider="imap"
    )
    return MailboxLinked(correlation_id=link_id, producer="registry", data=data)


def _rejected(link_id: str) -> LinkRejected:
    failure = Failure.of(FailureCode.IMAP_AUTH_FAILED)
    data = LinkRejectedData(link_id=link_id, owner=OWNER, address=ADDRESS, failure=failure)
    return LinkRejected(correlation_id=link_id, producer="registry", data=data)


def _authorization_required(link_id: str) -> AuthorizationRequired:
    data = AuthorizationRequiredData(
        link_id=link_id,
        owner=OWNER,
        address=ADDRESS,
        provider=ProviderType.GOOGLE,
        authorize_url="https://accounts.google.com/o/oauth2/v2/auth?state=s1",
        expires_at=utc_now() + timedelta(minutes=10),
    )
    return AuthorizationRequired(correlation_id=link_id, producer="oauth-broker", data=data)
