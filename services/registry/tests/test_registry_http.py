"""The registry's HTTP routes on in-memory storage: any address a link was accepted for can be
unlinked and looked up percent-encoded, or unlinked by its mailbox_id, freeing its plan slot;
strict JSON bodies."""

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import quote

import httpx
import pytest
from pydantic import SecretStr

from mailbox_link_contract.events import MailboxLinked, MailboxOwner, MailboxUnlinked
from mailbox_link_shared.addresses import normalize_address
from mailbox_link_shared.http import CallerKeys, build_http_app
from mailbox_link_shared.publishing import RecordingPublisher
from mailbox_link_shared.scopes import Scope, caller_keys
from registry import handlers
from registry.domain.plans import DEFAULT_PLANS, PlanTable
from registry.entrypoints.http import build_router
from registry.handlers import RegistryDeps
from registry_fakes import FakeClock, InMemoryRegistryStore, requested_event, verified_event

TOKEN = "operator-token-operator-token-01"
# The owner lookup needs its own scope; one key granted every route here keeps tests short.
KEYS = CallerKeys(
    caller_keys(
        {"operator": SecretStr(TOKEN)}, {"operator": [Scope.OPERATOR, Scope.OWNER_LOOKUP]}, {}
    )
)
ALICE = MailboxOwner(account_id="acme", user_id="alice")
ALICE_PATH = "/v1/accounts/acme/users/alice"
# The characters normalize_address accepts in a local part besides letters and digits.
SPECIAL = "/%?#+&=!$'*^_`{|}~-"


@dataclass
class Registry:
    client: httpx.AsyncClient
    deps: RegistryDeps

    async def link(self, address: str, link_id: str) -> str:
        """Links the address for Alice through the events; returns the mailbox_id."""
        await handlers.when_link_requested_reserve(
            requested_event(ALICE, link_id, address), self.deps
        )
        await handlers.when_mailbox_verified_link(
            verified_event(ALICE, link_id, address), self.deps
        )
        [linked] = [e for e in self.events() if isinstance(e, MailboxLinked)]
        return linked.data.mailbox_id

    def events(self) -> list[object]:
        assert isinstance(self.deps.publisher, RecordingPublisher)
        return list(self.deps.publisher.events)

    async def used(self) -> int:
        plan = await self.client.get(f"{ALICE_PATH}/plan")
        used: int = plan.json()["mailboxes_used"]
        return used


@pytest.fixture
async def registry() -> AsyncIterator[Registry]:
    clock = FakeClock()
    plans = PlanTable(DEFAULT_PLANS, "basic")
    deps = RegistryDeps(
        InMemoryRegistryStore(clock), RecordingPublisher(), plans, timedelta(minutes=15), clock
    )
    app = build_http_app(
        title="registry under test",
        router=build_router(deps, KEYS),
        keys=KEYS,
        on_start=[],
        on_stop=[],
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://registry.test",
        headers={"Authorization": f"Bearer {TOKEN}"},
    ) as client:
        yield Registry(client, deps)


@pytest.mark.parametrize("char", list(SPECIAL))
async def test_an_address_with_any_accepted_character_is_looked_up_and_unlinked_encoded(
    registry: Registry, char: str
) -> None:
    address = normalize_address(f"a{char}b@example.org")
    mailbox_id = await registry.link(address, "l1")
    encoded = quote(address, safe="")
    owner = await registry.client.get(f"/v1/mailboxes/{encoded}/owner")
    assert owner.json() == {"account_id": "acme", "user_id": "alice", "mailbox_id": mailbox_id}
    assert await registry.used() == 1
    unlinked = await registry.client.delete(f"{ALICE_PATH}/mailboxes/{encoded}")
    assert unlinked.status_code == 204, unlinked.text
    assert await registry.used() == 0
    assert (await registry.client.get(f"/v1/mailboxes/{encoded}/owner")).status_code == 404


async def test_an_operator_force_unlinks_an_address_with_a_slash(registry: Registry) -> None:
    await registry.link("a/b@example.org", "l1")
    unlinked = await registry.client.delete(f"/v1/mailboxes/{quote('a/b@example.org', safe='')}")
    assert unlinked.status_code == 204, unlinked.text
    assert await registry.used() == 0


async def test_a_mailbox_is_unlinked_by_its_mailbox_id_and_frees_its_slot(
    registry: Registry,
) -> None:
    mailbox_id = await registry.link("a/b@example.org", "l1")
    other = await registry.client.delete(f"/v1/accounts/acme/users/bob/mailboxes/{mailbox_id}")
    assert other.status_code == 404
    assert other.json()["fields"][0]["field"] == "mailbox"
    unlinked = await registry.client.delete(f"{ALICE_PATH}/mailboxes/{mailbox_id}")
    assert unlinked.status_code == 204, unlinked.text
    assert await registry.used() == 0
    [event] = [e for e in registry.events() if isinstance(e, MailboxUnlinked)]
    assert event.data.mailbox_id == mailbox_id
    again = await registry.client.delete(f"{ALICE_PATH}/mailboxes/{mailbox_id}")
    assert again.status_code == 404


@pytest.mark.parametrize(
    ("content", "status", "field"),
    [
        (b'{"plan": "free", "plan": "pro"}', 422, "plan"),
        (b'{"plan": "fr\\ud800ee"}', 422, "plan"),
        (b'{"plan": "fr\xffee"}', 400, "body"),
        (b'{"plan": ' + b"9" * 5000 + b"}", 400, "body"),
        (b'{"plan": ' + b"[" * 100 + b"]" * 100 + b"}", 400, "body"),
        (b'{"plan": true}', 422, "plan"),
    ],
)
async def test_a_plan_body_that_is_not_strictly_valid_changes_no_plan(
    registry: Registry, content: bytes, status: int, field: str
) -> None:
    response = await registry.client.put(
        f"{ALICE_PATH}/plan", content=content, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == status, response.text
    assert [p["field"] for p in response.json()["fields"]] == [field]
    plan = (await registry.client.get(f"{ALICE_PATH}/plan")).json()
    assert plan["plan"] == "basic"
    assert registry.events() == []
