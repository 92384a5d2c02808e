"""Which key reaches which registry route (docs/adr/0017): the product's caller key none of
them, link-api's key the user routes, the sign-in key the owner lookup, operators the rest."""

from datetime import timedelta

import httpx
import pytest
from pydantic import SecretStr

from mailbox_link_contract.events import MailboxOwner
from mailbox_link_shared.http import CallerKeys, build_http_app
from mailbox_link_shared.publishing import RecordingPublisher
from mailbox_link_shared.scopes import Scope, caller_keys
from registry import handlers
from registry.domain.plans import DEFAULT_PLANS, PlanTable
from registry.entrypoints.http import build_router
from registry.handlers import RegistryDeps
from registry_fakes import FakeClock, InMemoryRegistryStore, requested_event, verified_event

ALICE = MailboxOwner(account_id="acme", user_id="alice")
ADDRESS = "box@example.org"
TOKENS = {n: f"{n}-token-".ljust(32, "x") for n in ("product", "link-api", "sign-in", "ops")}
SCOPES = {
    "link-api": [Scope.REGISTRY],
    "sign-in": [Scope.OWNER_LOOKUP],
    "ops": [Scope.OPERATOR],
}  # "product": not listed, so links only
USER = "/v1/accounts/acme/users/alice"
ROUTES = {
    "list": ("GET", f"{USER}/mailboxes", None),
    "plan": ("GET", f"{USER}/plan", None),
    "owner": ("GET", f"/v1/mailboxes/{ADDRESS}/owner", None),
    "check": ("POST", "/v1/accounts/acme/mailboxes/{mailbox_id}/checks", None),
    "set plan": ("PUT", f"{USER}/plan", {"plan": "organization"}),
    "force-unlink": ("DELETE", f"/v1/mailboxes/{ADDRESS}", None),
}
ADMITS = {
    "product": set(),
    "link-api": {"list", "plan", "check"},
    "sign-in": {"owner"},
    "ops": {"list", "plan", "check", "set plan", "force-unlink"},
}


@pytest.fixture
async def registry() -> tuple[httpx.AsyncClient, RegistryDeps]:
    clock = FakeClock()
    deps = RegistryDeps(
        InMemoryRegistryStore(clock),
        RecordingPublisher(),
        PlanTable(DEFAULT_PLANS, "basic"),
        reservation_ttl=timedelta(minutes=15),
        clock=clock,
    )
    await handlers.when_link_requested_reserve(requested_event(ALICE, "l1", ADDRESS), deps)
    await handlers.when_mailbox_verified_link(verified_event(ALICE, "l1", ADDRESS), deps)
    keys = CallerKeys(caller_keys({n: SecretStr(t) for n, t in TOKENS.items()}, SCOPES, {}))
    app = build_http_app(
        title="registry", router=build_router(deps, keys), keys=keys, on_start=[], on_stop=[]
    )
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://r")
    return client, deps


async def _mailbox_id(deps: RegistryDeps) -> str:
    # Once force-unlinked, the route's mailbox is gone: any id does.
    ids = [r.mailbox.mailbox_id for r in await handlers.list_mailboxes(ALICE, deps) if r.mailbox]
    return ids[0] if ids else "gone"


@pytest.mark.parametrize("caller", sorted(ADMITS))
async def test_each_key_reaches_only_the_routes_of_its_scopes_and_changes_nothing_else(
    registry: tuple[httpx.AsyncClient, RegistryDeps], caller: str
) -> None:
    client, deps = registry
    headers = {"Authorization": f"Bearer {TOKENS[caller]}"}
    async with client:
        # Reads first, then the operators' changes, so a refused change can be seen unchanged.
        for name in ("list", "plan", "owner", "check", "set plan", "force-unlink"):
            method, path, body = ROUTES[name]
            path = path.replace("{mailbox_id}", await _mailbox_id(deps))
            answer = await client.request(method, path, json=body, headers=headers)
            if name in ADMITS[caller]:
                assert answer.status_code < 300, (name, answer.text)
            else:
                assert answer.status_code == 403, (name, answer.text)
                assert answer.json()["fields"][0]["field"] == "Authorization"
    if "force-unlink" not in ADMITS[caller]:
        assert [r.address for r in await handlers.list_mailboxes(ALICE, deps)] == [ADDRESS]
    if "set plan" not in ADMITS[caller]:
        assert (await handlers.get_plan(ALICE, deps)).plan == "basic"
