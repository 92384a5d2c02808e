"""The shared HTTP plumbing: who gets in, and the one error shape."""

import httpx
import pytest
from fastapi import APIRouter, Depends
from pydantic import BaseModel, SecretStr
from pymongo.errors import ServerSelectionTimeoutError

from mailbox_link_shared.http import build_http_app, require_scope

TOKEN = "t" * 32


class Body(BaseModel):
    password: str
    port: int


def _client() -> httpx.AsyncClient:
    router = APIRouter()

    @router.post("/echo")
    async def echo(body: Body) -> dict[str, int]:
        return {"port": body.port}

    @router.get("/down")
    async def down() -> None:
        raise ServerSelectionTimeoutError("no servers")

    app = build_http_app(
        title="t", router=router, service_keys={"caller": SecretStr(TOKEN)}, on_start=[], on_stop=[]
    )
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


async def test_wrong_or_missing_token_gets_401_naming_the_header() -> None:
    async with _client() as client:
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {TOKEN}"}):
            response = await client.post(
                "/echo", json={"password": "p", "port": 1}, headers=headers
            )
            assert response.status_code == 401
            assert response.headers["WWW-Authenticate"] == "Bearer"
            assert response.json()["fields"][0]["field"] == "Authorization"


async def test_validation_errors_name_fields_and_never_echo_values() -> None:
    async with _client() as client:
        response = await client.post(
            "/echo",
            json={"password": {"nested": "hunter2-secret"}, "port": "x"},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
    assert response.status_code == 422
    assert {f["field"] for f in response.json()["fields"]} == {"password", "port"}
    assert "hunter2" not in response.text


async def test_backend_outage_is_a_retryable_503() -> None:
    async with _client() as client:
        response = await client.get("/down", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "2"
    assert response.json()["error"] == "temporarily_unavailable"


async def test_health_needs_no_token() -> None:
    async with _client() as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}


async def test_oversized_bodies_get_413_before_parsing() -> None:
    async with _client() as client:
        response = await client.post(
            "/echo",
            content=b"{" + b" " * 70_000 + b"}",
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        )
    assert response.status_code == 413
    assert response.json()["error"] == "request_too_large"


async def test_a_scoped_route_admits_only_keys_granted_its_scope() -> None:
    keys = {"product": SecretStr("p" * 32), "sign-in": SecretStr("s" * 32)}
    router = APIRouter()

    @router.get("/owner", dependencies=[Depends(require_scope("owner_lookup", keys, GRANTS))])
    async def owner() -> dict[str, str]:
        return {"owner": "someone"}

    app = build_http_app(title="t", router=router, service_keys=keys, on_start=[], on_stop=[])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        granted = await c.get("/owner", headers={"Authorization": f"Bearer {'s' * 32}"})
        refused = await c.get("/owner", headers={"Authorization": f"Bearer {'p' * 32}"})
        unknown = await c.get("/owner", headers={"Authorization": "Bearer nope"})
    assert granted.json() == {"owner": "someone"}
    assert refused.status_code == 403
    assert refused.json()["error"] == "forbidden"
    assert refused.json()["fields"][0]["field"] == "Authorization"
    assert "owner_lookup" in refused.json()["fields"][0]["message"]
    assert unknown.status_code == 401


GRANTS = {"sign-in": ["owner_lookup"]}


def test_scopes_may_only_name_configured_keys() -> None:
    from pydantic import ValidationError

    from mailbox_link_shared.settings import HttpSettings

    keys = {"sign-in": "s" * 32}
    assert HttpSettings(service_keys=keys, service_key_scopes=GRANTS).service_key_scopes == GRANTS
    with pytest.raises(ValidationError, match="signin"):
        HttpSettings(service_keys=keys, service_key_scopes={"signin": ["owner_lookup"]})
