"""Every class of bad input gets a 4xx naming the field and the fix, and changes nothing."""

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from localinfra.services import RunningServices
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
    ("imap.port", True),  # read as port 1 before strict types
    ("imap.port", False),
    ("imap.port", 993.0),
    ("imap.port", "993"),
    ("smtp.port", True),
    ("terms_accepted", 1),
    ("terms_accepted", "true"),
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
        ("/v1/accounts/acme/users/u1/links", "not json", {}, 400, "body"),
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


def _raw(infra: Endpoints, replace: dict[str, str] | None = None) -> str:
    """The valid body as JSON text with some of its text replaced: what json.dumps cannot
    write (duplicate keys, lone surrogates) can then be sent."""
    text = json.dumps(imap_body(infra, USER))
    for old, new in (replace or {}).items():
        assert old in text, old
        text = text.replace(old, new, 1)
    return text


# (case, body bytes from the valid body, status, the field named)
RAW = [
    ("duplicate-email", {'"email": ': '"email": "x@example.org", "email": '}, 422, "email"),
    ("duplicate-password", {'"password": ': '"password": "a", "password": '}, 422, "imap.password"),
    ("lone-surrogate-password", {'"pw-bad-input"': '"pw-bad-input\\ud800"'}, 422, "imap.password"),
    ("lone-surrogate-email", {"bad-input@": "bad-input\\udfff@"}, 422, "email"),
    ("nan-port", {'"port": ': '"port": NaN, "x": '}, 400, "body"),
    ("5000-digit-port", {'"port": ': '"port": ' + "9" * 5000 + ', "x": '}, 400, "body"),
    ("deep-nesting", {": true": ": " + "[" * 3000 + "]" * 3000}, 400, "body"),
]  # fmt: skip
MALFORMED_BYTES = [
    ("bad-utf8", lambda text: text.encode().replace(b"bad-input@", b"bad-\xffinput@")),
    ("utf16", lambda text: text.encode("utf-16")),
    ("trailing-data", lambda text: text.encode() + b" {}"),
    ("truncated", lambda text: text.encode()[:-3]),
]


@pytest.mark.parametrize(
    ("replace", "status", "field"), [c[1:] for c in RAW], ids=[c[0] for c in RAW]
)
async def test_bodies_json_loads_would_accept_are_refused_and_change_nothing(
    api: httpx.AsyncClient, infra: Endpoints, replace: dict[str, str], status: int, field: str
) -> None:
    before = await _state(infra)
    response = await api.post(
        links_path("acme", "u-bad"),
        content=_raw(infra, replace).encode(),
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == status, response.text
    assert [p["field"] for p in response.json()["fields"]] == [field]
    assert "pw-bad-input" not in response.text
    assert await _state(infra) == before


@pytest.mark.parametrize(
    "spoil", [c[1] for c in MALFORMED_BYTES], ids=[c[0] for c in MALFORMED_BYTES]
)
async def test_a_malformed_body_gets_400_saying_so_and_changes_nothing(
    api: httpx.AsyncClient, infra: Endpoints, spoil: Any
) -> None:
    before = await _state(infra)
    response = await api.post(
        links_path("acme", "u-bad"),
        content=spoil(_raw(infra)),
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 400, response.text
    assert "malformed" in response.json()["message"]
    assert [p["field"] for p in response.json()["fields"]] == ["body"]
    assert await _state(infra) == before


CHUNKED_BYTES = 50 * 2**20
# Generous: a body buffered even in part would show as tens of MB (the old limit let a 200 MB
# chunked body take link-api to 800 MB).
RSS_BOUND_KIB = 8 * 1024


async def test_a_chunked_50_mb_body_gets_413_and_leaves_link_apis_memory_unchanged(
    api: httpx.AsyncClient, infra: Endpoints, services: RunningServices
) -> None:
    [link_api] = [p for p in services.processes if p.name == "link_api"]
    assert link_api.pid is not None
    status = Path(f"/proc/{link_api.pid}/status")
    body = _raw(infra).encode()

    async def chunks(total: int) -> AsyncIterator[bytes]:
        yield body[:-1]
        for _ in range(total // 65536):
            yield b" " * 65536
        yield b"}"

    path, json_type = links_path("acme", "u-big"), {"Content-Type": "application/json"}
    warm = await api.post(path, content=chunks(2**20), headers=json_type)
    assert warm.status_code == 413  # the refusal's code paths are loaded before measuring
    before = _kib(status, "VmRSS")
    _reset_peak(link_api.pid)
    peak_before = _kib(status, "VmHWM")
    records = await _state(infra)
    response = await api.post(path, content=chunks(CHUNKED_BYTES), headers=json_type, timeout=120)
    assert response.status_code == 413, response.text
    assert response.json()["fields"][0]["field"] == "body"
    assert "content-length" not in {k.lower() for k in response.request.headers}
    after, peak = _kib(status, "VmRSS"), _kib(status, "VmHWM")
    print(f"link-api VmRSS {before} -> {after} KiB, VmHWM {peak_before} -> {peak} KiB")
    assert after - before < RSS_BOUND_KIB
    assert peak - peak_before < RSS_BOUND_KIB
    assert await _state(infra) == records
    # The connection, and link-api, still serve.
    assert (await api.get("/v1/accounts/acme/users/u-big/mailboxes")).status_code == 200


def _kib(status: Path, key: str) -> int:
    for line in status.read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise AssertionError(f"{key} not in {status}")


def _reset_peak(pid: int) -> None:
    # "5" resets VmHWM to the current RSS (Linux >= 4.0), so the peak is this request's.
    Path(f"/proc/{pid}/clear_refs").write_text("5")


async def _state(infra: Endpoints) -> tuple[int, int]:
    records = await count_records(infra.kafka_bootstrap, "e2e")
    return records, await count_documents(infra.mongodb_uri, "e2e")
