"""The shared HTTP plumbing: who gets in, and the one error shape."""

import json
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import APIRouter
from pydantic import BaseModel, SecretStr
from pymongo.errors import ServerSelectionTimeoutError
from starlette.types import Message, Receive, Send
from starlette.types import Scope as AsgiScope

from mailbox_link_shared.api_errors import ApiErrorCode
from mailbox_link_shared.http import (
    MAX_BODY_BYTES,
    BodyLimit,
    CallerKeys,
    StrictJsonRoute,
    build_http_app,
    error_body,
    scoped,
)
from mailbox_link_shared.scopes import Scope, caller_keys

TOKEN = "t" * 32
KEYS = CallerKeys(caller_keys({"caller": SecretStr(TOKEN)}, {}, {}))


class Body(BaseModel):
    password: str
    port: int


def _client() -> httpx.AsyncClient:
    router = APIRouter(route_class=StrictJsonRoute)

    @router.post("/echo")
    async def echo(body: Body) -> dict[str, int]:
        return {"port": body.port}

    @router.get("/ping")
    async def ping() -> dict[str, str]:
        return {"pong": "yes"}

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


AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def _chunks(total: int, size: int = 8192) -> AsyncIterator[bytes]:
    """A body sent chunked (no Content-Length): a JSON object padded with spaces."""
    yield b'{"password": "p", "port": 1'
    sent = 0
    while sent < total:
        chunk = b" " * min(size, total - sent)
        sent += len(chunk)
        yield chunk
    yield b"}"


async def test_a_chunked_body_over_the_cap_gets_413_naming_the_body() -> None:
    async with _client() as client:
        response = await client.post("/echo", content=_chunks(2 * MAX_BODY_BYTES), headers=AUTH)
    assert response.status_code == 413
    assert response.json()["error"] == "request_too_large"
    assert response.json()["fields"][0]["field"] == "body"


async def test_chunked_bodies_up_to_the_cap_and_requests_without_a_body_work() -> None:
    async with _client() as client:
        chunked = await client.post(
            "/echo", content=_chunks(MAX_BODY_BYTES - 100), headers=AUTH | _JSON
        )
        bodiless = await client.get("/ping", headers=AUTH)
    assert chunked.status_code == 200, chunked.text
    assert chunked.json() == {"port": 1}
    assert bodiless.json() == {"pong": "yes"}


async def test_the_chunk_that_passes_the_cap_is_never_handed_to_the_app() -> None:
    """Pure ASGI: the app gets at most the cap, and no more chunk is read after the 413."""
    handed: list[int] = []
    pulled = 0

    async def app(scope: AsgiScope, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            handed.append(len(message["body"]))
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def client_receive() -> Message:
        nonlocal pulled
        pulled += 1
        return {"type": "http.request", "body": b"x" * 1000, "more_body": True}  # endless

    sent: list[Message] = []

    async def client_send(message: Message) -> None:
        sent.append(message)

    scope: AsgiScope = {"type": "http", "method": "POST", "path": "/", "headers": []}
    await BodyLimit(app, max_bytes=10_000)(scope, client_receive, client_send)
    assert sum(handed) <= 10_000
    assert pulled == 11  # the eleventh chunk passed the cap: refused, nothing read after it
    assert [m.get("status") for m in sent if m["type"] == "http.response.start"] == [413]


async def test_a_declared_length_over_the_cap_is_refused_before_reading() -> None:
    async with _client() as client:
        response = await client.post(
            "/echo", content=b"{" + b" " * (MAX_BODY_BYTES + 1) + b"}", headers=AUTH | _JSON
        )
    assert response.status_code == 413
    assert response.json()["fields"][0]["field"] == "body"


_JSON = {"Content-Type": "application/json"}


@pytest.mark.parametrize(
    ("content", "status", "field"),
    [
        (b'{"password": "p", "port": 1, "port": 2}', 422, "port"),
        (b'{"password": "\\ud800", "port": 1}', 422, "password"),
        (b'{"password": "p\xff", "port": 1}', 400, "body"),
        (b'{"password": "p", "port": ' + b"9" * 5000 + b"}", 400, "body"),
        (b"[" * 2000 + b"]" * 2000, 400, "body"),
        (b'{"password": "p", "port": 1} trailing', 400, "body"),
        (b'{"password": "p", "port": NaN}', 400, "body"),
    ],
)
async def test_strict_json_refusals_name_the_field_or_say_the_body_is_malformed(
    content: bytes, status: int, field: str
) -> None:
    async with _client() as client:
        response = await client.post("/echo", content=content, headers=AUTH | _JSON)
    assert response.status_code == status, response.text
    assert response.json()["fields"][0]["field"] == field
    if field == "body":
        assert "malformed" in response.json()["message"]


async def test_unknown_paths_and_methods_name_the_path_or_the_method() -> None:
    async with _client() as client:
        missing = await client.get("/nowhere", headers=AUTH)
        wrong = await client.delete("/echo", headers=AUTH)
    assert missing.status_code == 404
    assert missing.json()["fields"][0]["field"] == "path"
    assert wrong.status_code == 405
    assert wrong.json()["fields"][0]["field"] == "method"
    assert "POST" in wrong.json()["fields"][0]["message"]


def test_an_error_naming_a_field_with_a_lone_surrogate_still_encodes() -> None:
    body = error_body(ApiErrorCode.INVALID_REQUEST, "m", [("\ud800x", "bad \udfff")])
    assert json.dumps(body, ensure_ascii=False).encode("utf-8")
    assert body["fields"] == [{"field": "\\ud800x", "message": "bad \\udfff"}]
