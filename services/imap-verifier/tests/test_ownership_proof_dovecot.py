"""The proof's adapters against the real local stack: the relay routes the message by MX into
the trusted Dovecot, where the typed login finds and deletes it; the attacker's Dovecot never
gets it."""

import functools
import imaplib
import secrets
import ssl

import pytest

from imap_verifier.adapters.proof_mail import RelayProofSender
from imap_verifier.adapters.typed_inbox import typed_inbox
from imap_verifier.domain.ownership import ProofFailed, ProofPolicy, prove_ownership
from localinfra.stack import LocalStack
from mailbox_link_contract.events import ServerSettings
from mailbox_link_contract.failures import FailureCode
from mailbox_link_shared.mail_resolver import resolve_endpoint as resolve_mail_endpoint
from mailbox_link_shared.network_policy import parse_networks, parse_ports

# The stack's servers listen on ephemeral ports, outside the default mail ports.
resolve_endpoint = functools.partial(
    resolve_mail_endpoint, allowed_ports=parse_ports(["32768-60999"])
)
LOOPBACK = parse_networks(["127.0.0.0/8"])


async def _prove(
    stack: LocalStack, address: str, login: str, pw: str, port: int, wait: float
) -> None:
    endpoints = stack.endpoints
    tls = ssl.create_default_context(cafile=endpoints.ca_file)
    server = ServerSettings(host=endpoints.tls_hostname, port=port, security="ssl", username=login)
    inbox = typed_inbox(server, pw, resolve_endpoint, LOOPBACK, tls, 5.0)
    sender = RelayProofSender("127.0.0.1", endpoints.relay_port, 5.0)
    await prove_ownership(
        address, "Acme", "verify@mailbox-link.invalid", sender, inbox, ProofPolicy(deadline=wait)
    )


async def test_a_hosting_login_proves_its_address_and_the_message_is_deleted(
    local_stack: LocalStack,
) -> None:
    hexed = secrets.token_hex(4)
    address, login, pw = f"frank-{hexed}@hosted.test", f"hostuser-{hexed}", f"pw-{hexed}"
    local_stack.add_mail_user(login, pw, address=address)
    port = local_stack.endpoints.imaps_port
    await _prove(local_stack, address, login, pw, port, 10.0)
    tls = ssl.create_default_context(cafile=local_stack.endpoints.ca_file)
    with imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=tls) as imap:
        imap.login(login, pw)
        imap.select("INBOX")
        _, data = imap.search(None, "ALL")
        assert data[0].split() == []


async def test_the_attackers_own_server_never_receives_the_proof(local_stack: LocalStack) -> None:
    hexed = secrets.token_hex(4)
    login, pw = f"mallory-{hexed}", f"evil-{hexed}"
    local_stack.add_attacker_user(login, pw)
    local_stack.add_mail_user(f"victim-{hexed}@ownmx.test", f"owner-{hexed}")
    port = local_stack.endpoints.attacker_imaps_port
    with pytest.raises(ProofFailed) as failed:
        await _prove(local_stack, f"victim-{hexed}@ownmx.test", login, pw, port, 1.5)
    assert failed.value.code is FailureCode.OWNERSHIP_UNPROVEN
