"""Proof of ownership end to end: a hosting-style login is linked once the proof message it
receives is found (and deleted); an attacker's own Dovecot never receives it."""

import asyncio
import imaplib
import secrets
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from localinfra.services import RunningServices, start_services
from localinfra.stack import Endpoints, LocalStack

from .conftest import MailUser, imap_body, link_and_wait, service_config, unique_user_id

PROOF_SENDER = "verify@mailbox-link.invalid"


def _proof_messages(infra: Endpoints, login: str, password: str) -> tuple[list[bytes], bytes]:
    """The proof messages left in INBOX, and its STATUS (UIDNEXT shows what was delivered)."""
    tls = ssl.create_default_context(cafile=infra.ca_file)
    with imaplib.IMAP4_SSL("127.0.0.1", infra.imaps_port, ssl_context=tls) as imap:
        imap.login(login, password)
        _, status = imap.status("INBOX", "(UIDNEXT MESSAGES)")
        imap.select("INBOX")
        _, data = imap.search(None, "FROM", f'"{PROOF_SENDER}"')
        found: bytes = data[0]
        return found.split(), status[0]


async def test_a_hosting_login_is_linked_through_the_proof_and_the_message_is_gone(
    api: httpx.AsyncClient,
    registry_api: httpx.AsyncClient,
    infra: Endpoints,
    local_stack: LocalStack,
) -> None:
    hexed = secrets.token_hex(4)
    address, login, password = f"frank-{hexed}@hosted.test", f"hostuser-{hexed}", "pw-" + hexed
    local_stack.add_mail_user(login, password, address=address)
    body = imap_body(infra, MailUser(address, password))
    body["imap"]["username"] = body["smtp"]["username"] = login
    user_id = unique_user_id()
    link = await link_and_wait(api, "acme", user_id, body)
    assert link["status"] == "linked", link
    # One message (the proof) was delivered to this fresh INBOX, and it is gone.
    left, status = _proof_messages(infra, login, password)
    assert left == []
    assert b"UIDNEXT 2" in status, status
    assert b"MESSAGES 0" in status, status
    listed = await registry_api.get(f"/v1/accounts/acme/users/{user_id}/mailboxes")
    [mailbox] = listed.json()["mailboxes"]
    assert mailbox["authority"] == "ownership_proof"


@pytest.fixture
async def quick_proof_services(infra: Endpoints, workdir: Path) -> AsyncIterator[RunningServices]:
    config = service_config(
        infra,
        namespace="e2e-proof",
        extra_env={"MBL_OWNERSHIP_PROOF_DEADLINE_SECONDS": "3"},
    )
    running = await asyncio.to_thread(start_services, config, workdir / "services-proof")
    try:
        yield running
    finally:
        await asyncio.to_thread(running.stop)


async def test_an_attackers_server_is_ownership_unproven_and_the_owner_links_at_once(
    quick_proof_services: RunningServices, infra: Endpoints, local_stack: LocalStack
) -> None:
    hexed = secrets.token_hex(4)
    address = f"victim-{hexed}@ownmx.test"
    owner_pw, attacker_login, attacker_pw = "owner-" + hexed, f"mallory-{hexed}", "evil-" + hexed
    local_stack.add_mail_user(address, owner_pw)
    local_stack.add_attacker_user(attacker_login, attacker_pw)
    headers = {"Authorization": f"Bearer {quick_proof_services.caller_token}"}
    async with httpx.AsyncClient(base_url=quick_proof_services.api_url, headers=headers) as api:
        attack: dict[str, Any] = imap_body(
            infra,
            MailUser(address, attacker_pw),
            imap_port=infra.attacker_imaps_port,
            smtp_port=infra.attacker_submissions_port,
        )
        attack["imap"]["username"] = attack["smtp"]["username"] = attacker_login
        refused = await link_and_wait(api, "evil", unique_user_id(), attack)
        assert refused["status"] == "failed", refused
        assert refused["failure"]["code"] == "ownership_unproven"

        owned = await link_and_wait(
            api, "acme", unique_user_id(), imap_body(infra, MailUser(address, owner_pw))
        )
        assert owned["status"] == "linked", owned
