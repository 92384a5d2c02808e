"""The example internal service's mail parts against the real local stack, with access
answers built by hand as the registry's endpoint would give them (docs/adr/0023): a password
mailbox on the trusted Dovecot and an OAuth mailbox on the OAuth Dovecot each send a message
to themselves through their SMTP and find it over IMAP."""

import secrets
from typing import Any

import pytest

from localinfra.stack import Endpoints, LocalStack

from .access import parse_access
from .mailer import MailLoginRefused, find_message, send_message


def password_answer(
    infra: Endpoints, address: str, password: str, security: str, mechanisms: list[str]
) -> dict[str, Any]:
    """An access answer for a password mailbox, as the registry's endpoint gives it."""
    ssl = security == "ssl"
    return {
        "mailbox_id": f"mbx-{secrets.token_hex(4)}",
        "address": address,
        "auth": "password",
        "health": "active",
        "imap": {
            "host": infra.tls_hostname,
            "port": infra.imaps_port if ssl else infra.imap_starttls_port,
            "security": security,
            "username": address,
            "password": password,
        },
        "smtp": {
            "host": infra.tls_hostname,
            "port": infra.submissions_port if ssl else infra.submission_starttls_port,
            "security": security,
            "username": address,
            "password": password,
        },
        "sasl_mechanisms": mechanisms,
        "some_later_field": {"ignored": True},
    }


def oauth_answer(infra: Endpoints, address: str, token: str, mechanism: str) -> dict[str, Any]:
    """An access answer for an OAuth mailbox on the OAuth Dovecot."""
    server = {"host": infra.tls_hostname, "security": "ssl", "username": address}
    return {
        "mailbox_id": f"mbx-{secrets.token_hex(4)}",
        "address": address,
        "auth": "oauth",
        "imap": {**server, "port": infra.oauth_imaps_port},
        "smtp": {**server, "port": infra.oauth_submissions_port},
        "access_token": token,
        "expires_at": "2099-01-01T00:00:00Z",
        "sasl_mechanism": mechanism,
    }


@pytest.mark.parametrize(
    ("security", "mechanisms"),
    [("ssl", ["PLAIN", "LOGIN"]), ("starttls", ["PLAIN", "LOGIN"]), ("ssl", ["LOGIN"])],
)
async def test_a_password_mailbox_finds_what_it_sent_itself(
    local_stack: LocalStack, security: str, mechanisms: list[str]
) -> None:
    infra = local_stack.endpoints
    address, password = f"internal-{secrets.token_hex(4)}@example.org", secrets.token_urlsafe(12)
    local_stack.add_mail_user(address, password)
    access = parse_access(password_answer(infra, address, password, security, mechanisms))
    sent = await send_message(access, infra.ca_file)
    found = await find_message(access, infra.ca_file, sent.message_id, within=20)
    assert found.subject == sent.subject


async def test_a_password_mailbox_reaches_another_local_mailbox(local_stack: LocalStack) -> None:
    infra = local_stack.endpoints
    sender, receiver = (f"{n}-{secrets.token_hex(4)}@example.org" for n in ("from", "to"))
    local_stack.add_mail_user(sender, "sender-pw")
    local_stack.add_mail_user(receiver, "receiver-pw")
    sending = parse_access(password_answer(infra, sender, "sender-pw", "ssl", ["PLAIN"]))
    reading = parse_access(password_answer(infra, receiver, "receiver-pw", "ssl", ["PLAIN"]))
    sent = await send_message(sending, infra.ca_file, to=receiver)
    assert (await find_message(reading, infra.ca_file, sent.message_id)).subject == sent.subject


@pytest.mark.parametrize("mechanism", ["XOAUTH2", "OAUTHBEARER"])
async def test_an_oauth_mailbox_finds_what_it_sent_itself_with_its_token(
    local_stack: LocalStack, mechanism: str
) -> None:
    infra = local_stack.endpoints
    address, token = f"google-{secrets.token_hex(4)}@gmail.com", secrets.token_urlsafe(24)
    local_stack.grant_oauth_token(token, address)
    access = parse_access(oauth_answer(infra, address, token, mechanism))
    sent = await send_message(access, infra.ca_file)
    found = await find_message(access, infra.ca_file, sent.message_id, within=20)
    assert found.subject == sent.subject


@pytest.mark.parametrize("mechanism", ["XOAUTH2", "OAUTHBEARER"])
async def test_a_refused_token_fails_at_once_over_smtp_and_imap(
    local_stack: LocalStack, mechanism: str
) -> None:
    infra = local_stack.endpoints
    address = f"google-{secrets.token_hex(4)}@gmail.com"
    access = parse_access(oauth_answer(infra, address, "never-granted", mechanism))
    with pytest.raises(MailLoginRefused):
        await send_message(access, infra.ca_file, timeout=5)
    with pytest.raises(MailLoginRefused):
        await find_message(access, infra.ca_file, "<x@y>", within=1, timeout=5)


async def test_a_wrong_password_is_refused(local_stack: LocalStack) -> None:
    infra = local_stack.endpoints
    address = f"internal-{secrets.token_hex(4)}@example.org"
    local_stack.add_mail_user(address, "right-password")
    access = parse_access(password_answer(infra, address, "wrong", "ssl", ["PLAIN", "LOGIN"]))
    with pytest.raises(MailLoginRefused):
        await send_message(access, infra.ca_file, timeout=5)
