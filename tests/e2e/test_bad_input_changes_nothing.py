"""Every class of bad input gets a 4xx naming the field and the fix, and changes nothing."""

from typing import Any

import httpx
import pytest

from localinfra.stack import Endpoints

from .conftest import MailUser, imap_body, links_path
from .probes import count_documents, count_records

USER = MailUser("bad-input@example.org", "pw-bad-input")


def _with(infra: Endpoints, path: str, value: Any) -> dict[str, Any]:
    body = imap_body(infra, USER)
    *parents, leaf = path.split(".")
    target = body
    for key in parents:
        target = target[key]
    if value is _DELETE:
        del target[leaf]
    else:
        target[leaf] = value
    return body


_DELETE = object()

INVALID = [
    ("email", "alice@@example.org"),
    ("email", "al ice@example.org"),
    ("email", '"alice"@example.org'),
    ("email", "alice,bob@example.org"),
    ("email", "alice;bob@example.org"),
    ("email", "alice:bob@example.org"),
    ("email", "<alice>@example.org"),
    ("email", "alice(bob)@example.org"),
    ("email", "alice[bob]@example.org"),
    ("email", "alice\\bob@example.org"),
    ("email", "alice\u0007@example.org"),
    ("email", "a" * 65 + "@example.org"),
    ("email", "alice@" + "b" * 250 + ".org"),
    ("email", "alice@localhost"),
    ("email", _DELETE),
    ("terms_accepted", False),
    ("terms_accepted", _DELETE),
    ("imap.port", 0),
    ("imap.port", 65536),
    ("smtp.port", -1),
    ("imap.security", "tls"),
    ("smtp.security", None),
    ("imap.host", "imap example.org"),
    ("imap.host", "http://imap.example.org"),
    ("smtp.host", ""),
    ("imap.password", ""),
    ("imap.password", _DELETE),
    ("imap.username", "x" * 400),
]


@pytest.mark.parametrize(("field", "value"), INVALID, ids=[f"{f}={v!r}"[:40] for f, v in INVALID])
async def test_invalid_input_is_refused_and_changes_nothing(
    api: httpx.AsyncClient, infra: Endpoints, field: str, value: Any
) -> None:
    before = await _state(infra)
    response = await api.post(links_path("acme", "u-bad"), json=_with(infra, field, value))
    assert response.status_code == 422, response.text
    problems = response.json()["fields"]
    assert any(p["field"] == field and p["message"] for p in problems), problems
    assert "pw-bad-input" not in response.text
    assert await _state(infra) == before


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "field"),
    [
        ("/v1/accounts/acme/users/u%20x/links", None, {}, 422, "user_id"),
        ("/v1/accounts/acme/users/u1/links", "not json", {}, 422, None),
        (
            "/v1/accounts/acme/users/u1/links",
            None,
            {"Idempotency-Key": "has spaces"},
            400,
            "Idempotency-Key",
        ),
    ],
)
async def test_malformed_requests_are_refused(
    api: httpx.AsyncClient,
    infra: Endpoints,
    path: str,
    body: str | None,
    headers: dict[str, str],
    status: int,
    field: str | None,
) -> None:
    before = await _state(infra)
    if body is None:
        response = await api.post(path, json=imap_body(infra, USER), headers=headers)
    else:
        response = await api.post(path, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    if field:
        assert any(p["field"] == field for p in response.json()["fields"])
    assert await _state(infra) == before


@pytest.mark.parametrize(
    "authorization", [None, "Bearer wrong-token-wrong-token-wrong", "Basic abc"]
)
async def test_callers_without_a_valid_token_get_401_and_change_nothing(
    api: httpx.AsyncClient, infra: Endpoints, authorization: str | None
) -> None:
    before = await _state(infra)
    headers = {"Authorization": authorization} if authorization else {}
    async with httpx.AsyncClient(base_url=str(api.base_url), headers=headers) as anonymous:
        posted = await anonymous.post(links_path("acme", "u1"), json=imap_body(infra, USER))
        listed = await anonymous.get("/v1/accounts/acme/users/u1/mailboxes")
    assert posted.status_code == listed.status_code == 401
    assert posted.json()["fields"][0]["field"] == "Authorization"
    assert await _state(infra) == before


async def _state(infra: Endpoints) -> tuple[int, int]:
    records = await count_records(infra.kafka_bootstrap, "e2e")
    return records, await count_documents(infra.mongodb_uri, "e2e")
