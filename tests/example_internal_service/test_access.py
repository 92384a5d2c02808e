"""Reading the registry's access answers and writing SASL responses (no server)."""

import base64
import json
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from mailbox_link_contract.values import ConnectionSecurity

from . import sasl
from .access import (
    AccessRefused,
    UnreadableAccess,
    access_path,
    error_code,
    parse_access,
    request_access,
)

SERVER = {"host": "mail.example.org", "port": 993, "security": "ssl", "username": "a@example.org"}
PASSWORD_ANSWER: dict[str, Any] = {
    "mailbox_id": "mbx-1",
    "address": "a@example.org",
    "auth": "password",
    "health": "active",
    "imap": {**SERVER, "password": "imap-secret"},
    "smtp": {**SERVER, "port": 587, "security": "starttls", "password": "smtp-secret"},
    "sasl_mechanisms": ["PLAIN", "LOGIN"],
    "a_field_added_later": [1, 2],
}
OAUTH_ANSWER: dict[str, Any] = {
    "mailbox_id": "mbx-2",
    "address": "a@gmail.com",
    "auth": "oauth",
    "imap": {**SERVER, "username": "a@gmail.com"},
    "smtp": {**SERVER, "port": 465, "username": "a@gmail.com"},
    "access_token": "ya29.token-secret",
    "expires_at": "2026-12-08T01:00:00Z",
    "sasl_mechanism": "XOAUTH2",
}


def test_reads_a_password_answer_and_ignores_unknown_fields() -> None:
    access = parse_access(PASSWORD_ANSWER, cache_control="no-store")
    assert access.imap.password == "imap-secret"
    assert access.smtp.password == "smtp-secret"
    assert access.smtp.security is ConnectionSecurity.STARTTLS
    assert access.sasl_mechanisms == ("PLAIN", "LOGIN")
    assert not access.uses_token
    assert access.health == "active"


def test_reads_an_oauth_answer() -> None:
    access = parse_access(OAUTH_ANSWER)
    assert access.uses_token
    assert access.sasl_mechanisms == ("XOAUTH2",)
    assert access.expires_at == datetime(2026, 12, 8, 1, 0, tzinfo=UTC)
    assert access.imap.password is None


def test_secrets_never_appear_in_a_repr() -> None:
    for answer in (PASSWORD_ANSWER, OAUTH_ANSWER):
        text = repr(parse_access(answer))
        assert "secret" not in text, text


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"imap": None}, "imap"),
        ({"smtp": {**SERVER, "port": 0, "password": "x"}}, "smtp.port"),
        ({"imap": {**SERVER, "security": "none", "password": "x"}}, "imap.security"),
        ({"imap": SERVER}, "imap.password"),
        ({"sasl_mechanisms": ["CRAM-MD5"]}, "sasl_mechanisms"),
    ],
)
def test_an_unusable_answer_names_the_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(UnreadableAccess, match=field):
        parse_access({**PASSWORD_ANSWER, **change})


def test_an_unknown_token_mechanism_is_unusable() -> None:
    with pytest.raises(UnreadableAccess, match="sasl_mechanism"):
        parse_access({**OAUTH_ANSWER, "sasl_mechanism": "GSSAPI"})


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"error": "mailbox_not_found", "message": "x", "fields": []}, "mailbox_not_found"),
        ({"error": {"code": "reconnect_required"}}, "reconnect_required"),
        ({"detail": "x"}, "409"),
    ],
)
def test_reads_the_error_code(body: dict[str, Any], code: str) -> None:
    assert error_code(httpx.Response(409, json=body)) == code


async def test_request_access_posts_the_margin_and_raises_the_refusal() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path.endswith("/mbx-2/access"):
            return httpx.Response(200, json=OAUTH_ANSWER, headers={"Cache-Control": "no-store"})
        return httpx.Response(404, json={"error": "mailbox_not_found", "message": "", "fields": []})

    transport = httpx.MockTransport(answer)
    async with httpx.AsyncClient(transport=transport, base_url="http://registry") as client:
        access = await request_access(client, "acme", "mbx-2", min_valid_seconds=600)
        with pytest.raises(AccessRefused) as refused:
            await request_access(client, "acme", "mbx-9")
    assert access.cache_control == "no-store"
    assert seen[0].url.path == access_path("acme", "mbx-2")
    assert json.loads(seen[0].content) == {"min_valid_seconds": 600}
    assert json.loads(seen[1].content) == {}
    assert (refused.value.status, refused.value.code) == (404, "mailbox_not_found")


def test_sasl_initial_responses() -> None:
    assert sasl.plain("u", "p") == b"\0u\0p"
    assert sasl.xoauth2("a@gmail.com", "tok") == b"user=a@gmail.com\x01auth=Bearer tok\x01\x01"
    # RFC 7628 section 4.1's example shape, with the GS2 header naming the user.
    assert sasl.oauthbearer("user@example.com", "vF9dft4qmT", "server.example.com", 143) == (
        b"n,a=user@example.com,\x01host=server.example.com\x01port=143\x01"
        b"auth=Bearer vF9dft4qmT\x01\x01"
    )
    assert sasl.oauthbearer("a=b,c", "t", "h", 1).startswith(b"n,a=a=3Db=2Cc,")
    # Google's documented XOAUTH2 example, base64 as sent.
    assert base64.b64encode(
        sasl.xoauth2("someuser@example.com", "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg")
    ) == (
        b"dXNlcj1zb21ldXNlckBleGFtcGxlLmNvbQFhdXRoPUJlYXJlciB5YTI5LnZGOWRmdDRxbVRjMk52"
        b"YjNSbGNrQmhkSFJoZG1semRHRXVZMjl0Q2cBAQ=="
    )


def test_the_responder_answers_an_error_challenge_so_the_server_says_no() -> None:
    xoauth2 = sasl.responder("XOAUTH2", b"initial")
    assert (xoauth2(None), xoauth2(b'{"status":"401"}')) == (b"initial", b"")
    bearer = sasl.responder("OAUTHBEARER", b"initial")
    assert (bearer(None), bearer(b"{}")) == (b"initial", b"\x01")
