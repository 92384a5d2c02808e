"""Provider detection through link-api, and a link that needs nothing but the address and the
password: the servers come from SRV records on the local DNS server."""

import secrets
from typing import Any

import httpx
import pytest

from localinfra.stack import (
    DISCOVERABLE_DOMAIN,
    NO_MAIL_DOMAIN,
    OWN_MX_DOMAIN,
    Endpoints,
    LocalStack,
)

from .conftest import links_path, unique_user_id, wait_for_outcome


async def test_providers_are_listed_for_a_picker(api: httpx.AsyncClient) -> None:
    providers = (await api.get("/v1/providers")).json()["providers"]
    names = [p["provider"] for p in providers]
    assert names == ["google", "microsoft", "yahoo", "aol", "icloud", "imap"]
    icloud = next(p for p in providers if p["provider"] == "icloud")
    assert icloud["auth_methods"] == ["password"]
    assert icloud["app_password_url"]
    assert icloud["settings"]["imap"]["host"] == "imap.mail.me.com"


async def test_detect_finds_imap_settings_from_srv_records(api: httpx.AsyncClient) -> None:
    answer = await api.get("/v1/providers/detect", params={"email": f"Erin@{DISCOVERABLE_DOMAIN}"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["email"] == f"erin@{DISCOVERABLE_DOMAIN}"
    assert body["provider"] == "imap"
    assert body["auth_method"] == "password"
    assert body["settings"]["imap"]["host"] == "localhost"
    assert body["settings"]["imap"]["username"] == f"erin@{DISCOVERABLE_DOMAIN}"
    assert body["evidence"][0]["rule"] == "srv"
    assert "google" in [a["provider"] for a in body["alternatives"]]


async def test_detect_knows_consumer_domains(api: httpx.AsyncClient) -> None:
    body = (await api.get("/v1/providers/detect", params={"email": "carol@outlook.com"})).json()
    assert (body["provider"], body["auth_method"], body["confidence"]) == (
        "microsoft",
        "oauth",
        "high",
    )


async def test_detect_explains_a_domain_without_mail_server(api: httpx.AsyncClient) -> None:
    body = (await api.get("/v1/providers/detect", params={"email": f"x@{NO_MAIL_DOMAIN}"})).json()
    assert body["provider"] == "unknown"
    assert body["reason"] == "no_mail_server"
    assert "no MX" in body["message"]


async def test_detect_refuses_an_invalid_address(api: httpx.AsyncClient) -> None:
    answer = await api.get("/v1/providers/detect", params={"email": "not-an-address"})
    assert answer.status_code == 422
    assert answer.json()["fields"][0]["field"] == "email"


async def test_a_mailbox_links_with_only_its_address_and_password(
    api: httpx.AsyncClient, local_stack: LocalStack, infra: Endpoints
) -> None:
    address = f"erin-{secrets.token_hex(4)}@{DISCOVERABLE_DOMAIN}"
    password = secrets.token_urlsafe(18)
    local_stack.add_mail_user(address, password)
    user_id = unique_user_id()
    body = {"email": address, "terms_accepted": True, "password": password}
    accepted = await api.post(links_path("acme", user_id), json=body)
    assert accepted.status_code == 202, accepted.text
    link = await wait_for_outcome(api, accepted.json()["status_url"])
    assert link["status"] == "linked", link
    mailboxes = (await api.get(f"/v1/accounts/acme/users/{user_id}/mailboxes")).json()
    [mailbox] = mailboxes["mailboxes"]
    assert (mailbox["imap"]["host"], mailbox["imap"]["port"]) == ("localhost", infra.imaps_port)
    assert mailbox["smtp"]["port"] == infra.submissions_port


@pytest.mark.parametrize(
    ("body", "code", "field"),
    [
        ({"email": "carol@outlook.com", "password": "x"}, "oauth_required", "password"),
        ({"email": f"x@{NO_MAIL_DOMAIN}", "password": "x"}, "no_mail_server", "email"),
        ({"email": f"x@{DISCOVERABLE_DOMAIN}"}, "invalid_request", "password"),
        ({"email": f"x@{OWN_MX_DOMAIN}", "password": "x"}, "settings_required", "imap"),
        (
            {"email": "x@icloud.com", "provider": "microsoft", "password": "x"},
            "oauth_required",
            "password",
        ),
    ],
)
async def test_a_link_without_servers_says_what_is_missing(
    api: httpx.AsyncClient, body: dict[str, Any], code: str, field: str
) -> None:
    answer = await api.post(
        links_path("acme", unique_user_id()), json={**body, "terms_accepted": True}
    )
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"] == code
    assert answer.json()["fields"][0]["field"] == field
