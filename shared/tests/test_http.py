"""The shared HTTP plumbing: who gets in, and the one error shape."""

import httpx
from fastapi import APIRouter
from pydantic import BaseModel, SecretStr
from pymongo.errors import ServerSelectionTimeoutError

from mailbox_link_shared.http import CallerKeys, build_http_app, scoped
from mailbox_link_shared.scopes import Scope, caller_keys

TOKEN = "t" * 32
KEYS = CallerKeys(caller_keys({"caller": SecretStr(TOKEN)}, {}, {}))


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
        title="t",
        router=scoped(KEYS.require(Scope.LINKS), router),
        keys=KEYS,
        on_start=[],
        on_stop=[],
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
