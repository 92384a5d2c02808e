"""Caller keys have scopes (docs/adr/0017): each route admits only keys granted its scope, a key
bound to accounts acts for those alone, and /docs loads nothing from anywhere."""

import base64
import re

import httpx
import pytest
from fastapi import APIRouter
from pydantic import SecretStr, ValidationError

from mailbox_link_shared.http import CallerKeys, build_http_app, scoped
from mailbox_link_shared.scopes import DEFAULT_SCOPES, Scope, caller_keys
from mailbox_link_shared.settings import HttpSettings

PRODUCT, SIGN_IN, OPS, CRM = "p" * 32, "s" * 32, "o" * 32, "c" * 32
TOKENS = {"product": PRODUCT, "sign-in": SIGN_IN, "ops": OPS, "crm": CRM}
SCOPES = {"sign-in": [Scope.OWNER_LOOKUP], "ops": [Scope.OPERATOR]}
ACCOUNTS = {"crm": ["acme"]}


def _app(api_docs: bool = True) -> httpx.AsyncClient:
    keys = CallerKeys(caller_keys({n: SecretStr(t) for n, t in TOKENS.items()}, SCOPES, ACCOUNTS))
    links, lookup, operator = APIRouter(), APIRouter(), APIRouter()

    @links.get("/v1/accounts/{account_id}/users/{user_id}/links")
    async def list_links(account_id: str, user_id: str) -> dict[str, str]:
        """Lists a user's links."""
        return {"account": account_id}

    @lookup.get("/v1/owner")
    async def owner() -> dict[str, str]:
        return {"owner": "someone"}

    @operator.put("/v1/accounts/{account_id}/users/{user_id}/plan")
    async def plan(account_id: str, user_id: str) -> dict[str, str]:
        return {"plan": "organization"}

    router = APIRouter()
    router.include_router(scoped(keys.require(Scope.LINKS), links))
    router.include_router(scoped(keys.require(Scope.OWNER_LOOKUP), lookup))
    router.include_router(scoped(keys.require(Scope.OPERATOR), operator))
    app = build_http_app(
        title="t", router=router, keys=keys, on_start=[], on_stop=[], api_docs=api_docs
    )
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


def _as(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_each_route_admits_only_keys_granted_its_scope() -> None:
    async with _app() as client:
        assert (await client.get("/v1/owner", headers=_as(SIGN_IN))).json() == {"owner": "someone"}
        refused = await client.get("/v1/owner", headers=_as(PRODUCT))
        plan = await client.put("/v1/accounts/acme/users/u1/plan", headers=_as(PRODUCT))
        by_operator = await client.put("/v1/accounts/acme/users/u1/plan", headers=_as(OPS))
        operator_on_links = await client.get("/v1/accounts/acme/users/u1/links", headers=_as(OPS))
        unknown = await client.get("/v1/owner", headers=_as("x" * 32))
    assert refused.status_code == plan.status_code == operator_on_links.status_code == 403
    assert by_operator.json() == {"plan": "organization"}
    body = plan.json()
    assert body["error"] == "forbidden"
    assert body["fields"][0]["field"] == "Authorization"
    assert "'operator'" in body["fields"][0]["message"]
    assert unknown.status_code == 401


async def test_a_key_without_listed_scopes_may_call_only_the_product_routes() -> None:
    assert {Scope.LINKS} == DEFAULT_SCOPES
    async with _app() as client:
        links = await client.get("/v1/accounts/acme/users/u1/links", headers=_as(PRODUCT))
        lookup = await client.get("/v1/owner", headers=_as(PRODUCT))
    assert links.status_code == 200
    assert lookup.status_code == 403


async def test_a_key_bound_to_an_account_gets_404_for_any_other_existing_or_not() -> None:
    async with _app() as client:
        own = await client.get("/v1/accounts/acme/users/u1/links", headers=_as(CRM))
        other = await client.get("/v1/accounts/globex/users/u1/links", headers=_as(CRM))
        made_up = await client.get("/v1/accounts/nobody-xyz/users/u9/links", headers=_as(CRM))
        unbound = await client.get("/v1/accounts/globex/users/u1/links", headers=_as(PRODUCT))
    assert own.json() == {"account": "acme"}
    assert unbound.json() == {"account": "globex"}
    assert other.status_code == made_up.status_code == 404
    assert other.json() == made_up.json()
    assert other.json()["error"] == "account_not_found"
    assert other.json()["fields"][0]["field"] == "account_id"


def test_an_app_refuses_to_build_with_a_route_that_names_no_scope() -> None:
    router = APIRouter()

    @router.get("/open")
    async def open_route() -> None:
        return None

    with pytest.raises(ValueError, match="/open"):
        build_http_app(title="t", router=router, keys=CallerKeys(()), on_start=[], on_stop=[])


async def test_docs_and_schema_need_a_key_and_load_nothing_from_outside() -> None:
    async with _app() as client:
        for path in ("/docs", "/openapi.json"):
            anonymous = await client.get(path)
            assert anonymous.status_code == 401
            assert anonymous.json()["fields"][0]["field"] == "Authorization"
        schema = await client.get("/openapi.json", headers=_as(PRODUCT))
        page = await client.get("/docs", headers=_as(PRODUCT))
        basic = base64.b64encode(f"me:{OPS}".encode()).decode()
        in_a_browser = await client.get("/docs", headers={"Authorization": f"Basic {basic}"})
        wrong = base64.b64encode(b"me:wrong").decode()
        refused = await client.get("/docs", headers={"Authorization": f"Basic {wrong}"})
        basic_elsewhere = await client.get(
            "/v1/accounts/acme/users/u1/links", headers={"Authorization": f"Basic {basic}"}
        )
    assert "/v1/accounts/{account_id}/users/{user_id}/links" in schema.json()["paths"]
    assert page.status_code == in_a_browser.status_code == 200
    assert "Lists a user&#x27;s links." in page.text
    # The browser asks for the token itself (as a password) when /docs answers 401.
    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"].startswith("Basic ")
    assert basic_elsewhere.status_code == 401  # only the docs take Basic
    csp = page.headers["Content-Security-Policy"]
    assert csp.startswith("default-src 'none';")
    assert "script-src" not in csp
    assert "<script" not in page.text.lower()
    assert not re.search(r"""(src|href|url)\s*[=(]\s*["']?(https?:)?//""", page.text, re.I)


async def test_docs_switched_off_are_not_found_for_anyone() -> None:
    async with _app(api_docs=False) as client:
        for path in ("/docs", "/openapi.json", "/redoc"):
            assert (await client.get(path, headers=_as(PRODUCT))).status_code == 404
            assert (await client.get(path)).status_code == 404


def test_settings_refuse_unknown_scopes_and_keys() -> None:
    keys = {"sign-in": "s" * 32, "crm": "c" * 32}
    settings = HttpSettings(service_keys=keys, service_key_scopes={"sign-in": ["owner_lookup"]})
    assert settings.service_key_scopes == {"sign-in": [Scope.OWNER_LOOKUP]}
    assert {k.name: k.scopes for k in settings.caller_keys()} == {
        "sign-in": {Scope.OWNER_LOOKUP},
        "crm": {Scope.LINKS},
    }
    with pytest.raises(ValidationError, match="signin"):
        HttpSettings(service_keys=keys, service_key_scopes={"signin": ["owner_lookup"]})
    with pytest.raises(ValidationError, match="service_key_scopes"):
        HttpSettings(service_keys=keys, service_key_scopes={"crm": ["admin"]})
    with pytest.raises(ValidationError, match="MBL_SERVICE_KEY_ACCOUNTS"):
        HttpSettings(service_keys=keys, service_key_accounts={"nobody": ["acme"]})
    with pytest.raises(ValidationError, match="at least one"):
        HttpSettings(service_keys=keys, service_key_accounts={"crm": []})


def test_a_key_bound_to_accounts_cannot_hold_a_scope_that_acts_across_accounts() -> None:
    keys = {"ops": "o" * 32}
    with pytest.raises(ValidationError, match="operator"):
        HttpSettings(
            service_keys=keys,
            service_key_scopes={"ops": ["operator"]},
            service_key_accounts={"ops": ["acme"]},
        )
    bound = HttpSettings(service_keys=keys, service_key_accounts={"ops": ["acme", "beta"]})
    assert bound.caller_keys()[0].accounts == frozenset({"acme", "beta"})
