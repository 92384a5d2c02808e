"""A link request while Kafka is away (docs/adr/0022): refused 503 with Retry-After and nothing
stored when Kafka is known away; a publish that outlasts the deadline is left to the relay."""

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import timedelta

import httpx
import pytest
from pydantic import SecretStr

from link_api.adapters.detector import Detector
from link_api.adapters.link_store import Send
from link_api.entrypoints.http import build_router
from link_api.handlers import LinkApiDeps
from link_api_fakes import FakeAutoconfig, FakeDns, InMemoryLinkStore
from mailbox_link_contract.events import Envelope
from mailbox_link_shared.crypto import SecretBox, generate_key
from mailbox_link_shared.http import CallerKeys, build_http_app, scoped
from mailbox_link_shared.scopes import Scope, caller_keys

TOKEN = "caller-token-caller-token-0123"
KEYS = CallerKeys(caller_keys({"caller": SecretStr(TOKEN)}, {}, {}))
LINKS = "/v1/accounts/acme/users/u1/links"
BODY = {"email": "alice@gmail.com", "terms_accepted": True}


class HangingPublisher:
    """Kafka away: a publish never completes."""

    def __init__(self) -> None:
        self.attempts = 0

    async def publish(self, event: Envelope) -> None:
        self.attempts += 1
        await asyncio.sleep(3600)


class NoRegistry:
    async def list_mailboxes(self, owner: object) -> list[object]:
        raise AssertionError("not called")

    async def unlink_mailbox(self, owner: object, mailbox: str) -> object:
        raise AssertionError("not called")


Client = Callable[[LinkApiDeps], Awaitable[httpx.AsyncClient]]


@pytest.fixture
async def store() -> InMemoryLinkStore:
    return InMemoryLinkStore()


@pytest.fixture
async def client_for() -> AsyncIterator[Client]:
    clients: list[httpx.AsyncClient] = []

    async def make(deps: LinkApiDeps) -> httpx.AsyncClient:
        app = build_http_app(
            title="link-api under test",
            router=scoped(
                KEYS.require(Scope.LINKS),
                build_router(deps, NoRegistry(), Detector(FakeDns(), FakeAutoconfig())),  # type: ignore[arg-type]
            ),
            keys=KEYS,
            on_start=[],
            on_stop=[],
        )
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://link-api.test",
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


def _deps(store: InMemoryLinkStore, publisher: HangingPublisher) -> LinkApiDeps:
    box = SecretBox({"k1": SecretStr(generate_key())}, "k1")
    return LinkApiDeps(store, publisher, box, timedelta(minutes=15))


async def _away() -> bool:
    return False


async def test_kafka_known_away_refuses_503_and_stores_nothing(
    store: InMemoryLinkStore, client_for: Client
) -> None:
    publisher = HangingPublisher()
    deps = replace(_deps(store, publisher), events_ready=_away)
    client = await client_for(deps)
    answer = await client.post(LINKS, json=BODY, headers={"Idempotency-Key": "k-1"})
    assert answer.status_code == 503, answer.text
    assert answer.headers["Retry-After"] == "5"
    assert answer.json()["error"] == "temporarily_unavailable"
    assert publisher.attempts == 0
    assert (store.links, store.in_flight, store.keys, store.decisions) == ({}, {}, {}, {})


async def test_a_publish_past_the_deadline_is_left_to_the_relay(
    store: InMemoryLinkStore, client_for: Client
) -> None:
    publisher = HangingPublisher()
    deps = replace(_deps(store, publisher), publish_deadline_seconds=0.2)
    client = await client_for(deps)
    began = time.monotonic()
    answer = await client.post(LINKS, json=BODY)
    assert time.monotonic() - began < 30  # not the client's minutes; the bound is 0.2 s
    assert answer.status_code == 202, answer.text
    link_id = answer.json()["link_id"]
    assert answer.json()["status"] == "pending"
    # Decided `publish` before the attempt: only ever sent (by the relay), never failed.
    assert store.decisions[link_id].send is Send.PUBLISH
    assert link_id in store.unsent_since
    assert publisher.attempts == 1
