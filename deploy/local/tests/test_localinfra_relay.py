"""The MX-routing relay delivers over LMTP into the accounts IMAP logins read."""

from __future__ import annotations

import imaplib
import smtplib
import ssl
import uuid

import pytest

from localinfra import Endpoints, LocalStack

ALICE, ALICE_PW = "alice@example.org", "alice-secret"
HOST_LOGIN, HOST_PW, HOST_ADDRESS = "hostuser7", "host-secret", "frank@hosted.test"
ATTACKER, ATTACKER_PW = "mallory", "mallory-secret"


@pytest.fixture(scope="module")
def stack(local_stack: LocalStack) -> LocalStack:
    local_stack.add_mail_user(ALICE, ALICE_PW)
    local_stack.add_mail_user(HOST_LOGIN, HOST_PW, address=HOST_ADDRESS)
    local_stack.add_attacker_user(ATTACKER, ATTACKER_PW)
    return local_stack


def _send(endpoints: Endpoints, rcpt: str, token: str) -> None:
    message = f"From: proof@mbl.test\r\nTo: {rcpt}\r\nSubject: {token}\r\n\r\n{token}\r\n"
    with smtplib.SMTP("127.0.0.1", endpoints.relay_port, timeout=10) as smtp:
        assert smtp.sendmail("proof@mbl.test", [rcpt], message.encode()) == {}


def _search(endpoints: Endpoints, port: int, login: str, password: str, token: str) -> list[bytes]:
    tls = ssl.create_default_context(cafile=endpoints.ca_file)
    with imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=tls) as imap:
        imap.login(login, password)
        imap.select("INBOX")
        _, data = imap.search(None, "SUBJECT", f'"{token}"')
        found: bytes = data[0]
        return found.split()


@pytest.mark.parametrize(
    ("rcpt", "login", "password"),
    [(ALICE, ALICE, ALICE_PW), (HOST_ADDRESS, HOST_LOGIN, HOST_PW)],
)
def test_relay_delivers_to_the_right_inbox(
    stack: LocalStack, rcpt: str, login: str, password: str
) -> None:
    endpoints = stack.endpoints
    token = f"token-{uuid.uuid4().hex}"
    _send(endpoints, rcpt, token)
    assert len(_search(endpoints, endpoints.imaps_port, login, password, token)) == 1
    # The attacker's Dovecot has none of it.
    assert _search(endpoints, endpoints.attacker_imaps_port, ATTACKER, ATTACKER_PW, token) == []


def test_relay_refuses_domain_without_mapped_mx(stack: LocalStack) -> None:
    endpoints = stack.endpoints
    with (
        smtplib.SMTP("127.0.0.1", endpoints.relay_port, timeout=10) as smtp,
        pytest.raises(smtplib.SMTPRecipientsRefused) as refused,
    ):
        smtp.sendmail("proof@mbl.test", ["bob@nomail.test"], b"Subject: x\r\n\r\nx\r\n")
    assert refused.value.recipients["bob@nomail.test"][0] == 550


def test_attacker_dovecot_has_no_main_users(stack: LocalStack) -> None:
    endpoints = stack.endpoints
    tls = ssl.create_default_context(cafile=endpoints.ca_file)
    with (
        imaplib.IMAP4_SSL("127.0.0.1", endpoints.attacker_imaps_port, ssl_context=tls) as imap,
        pytest.raises(imaplib.IMAP4.error),
    ):
        imap.login(ALICE, ALICE_PW)
