"""The verifier's verdicts on security chosen wrong for the port, against the local stack's
real Dovecot (its implicit-TLS and its STARTTLS listeners), through the real resolver and
probes: each mistake ends in `security_mismatch` naming the setting that works, and a wrong
IMAP password with a wrong SMTP security reports both."""

import functools
import json
import secrets
import ssl
import time

import pytest
from pydantic import SecretStr
from verifier_fakes import NO_RELAY, MemoryPendingStore

from imap_verifier.handlers import verify_link
from imap_verifier.ports import VerifierDeps
from localinfra.stack import LocalStack
from mailbox_link_contract.events import (
    Authority,
    LinkRequested,
    LinkRequestedData,
    MailboxOwner,
    MailboxVerified,
    ServerSettings,
    VerificationFailed,
)
from mailbox_link_contract.failures import FailureCode
from mailbox_link_shared.crypto import SecretBox, generate_key
from mailbox_link_shared.mail_probes import probe_imap, probe_smtp
from mailbox_link_shared.mail_resolver import resolve_endpoint as resolve_mail_endpoint
from mailbox_link_shared.network_policy import parse_networks, parse_ports
from mailbox_link_shared.publishing import RecordingPublisher

# The stack's servers listen on ephemeral ports, outside the default mail ports.
resolve_endpoint = functools.partial(
    resolve_mail_endpoint, allowed_ports=parse_ports(["32768-60999"])
)
LOOPBACK = parse_networks(["127.0.0.0/8"])
BOX = SecretBox({"k1": SecretStr(generate_key())}, "k1")
DEADLINE = 15.0  # the verifier's default
WORDS = {"ssl": "SSL/TLS", "starttls": "STARTTLS"}


def _deps(stack: LocalStack) -> VerifierDeps:
    return VerifierDeps(
        publisher=RecordingPublisher(),
        secret_box=BOX,
        resolve=resolve_endpoint,
        probe_imap=probe_imap,
        probe_smtp=probe_smtp,
        tls=ssl.create_default_context(cafile=stack.endpoints.ca_file),
        allowlist=LOOPBACK,
        timeout=DEADLINE,
        store=MemoryPendingStore(),
        proof=NO_RELAY,
    )


class Mailbox:
    """A fresh Dovecot user, and the link request a user would send for it."""

    def __init__(self, stack: LocalStack) -> None:
        self.stack = stack
        self.address = f"mismatch-{secrets.token_hex(4)}@example.org"
        self.password = secrets.token_urlsafe(12)
        stack.add_mail_user(self.address, self.password)
        e = stack.endpoints
        self.ports = {
            ("imap", "ssl"): e.imaps_port,
            ("imap", "starttls"): e.imap_starttls_port,
            ("smtp", "ssl"): e.submissions_port,
            ("smtp", "starttls"): e.submission_starttls_port,
        }

    def request(
        self,
        imap: tuple[int, str] | None = None,
        smtp: tuple[int, str] | None = None,
        imap_password: str | None = None,
        imap_username: str | None = None,
    ) -> LinkRequested:
        host = self.stack.endpoints.tls_hostname
        imap_port, imap_security = imap or (self.ports["imap", "ssl"], "ssl")
        smtp_port, smtp_security = smtp or (self.ports["smtp", "ssl"], "ssl")
        secret = {
            "imap_password": imap_password or self.password,
            "smtp_password": self.password,
        }
        data = LinkRequestedData(
            link_id=f"l-{secrets.token_hex(4)}",
            owner=MailboxOwner(account_id="acme", user_id="u1"),
            address=self.address,
            provider="imap",
            imap=ServerSettings(
                host=host,
                port=imap_port,
                security=imap_security,
                username=imap_username or self.address,
            ),
            smtp=ServerSettings(
                host=host, port=smtp_port, security=smtp_security, username=self.address
            ),
            credentials=BOX.seal(json.dumps(secret), self.address),
            authority=Authority.SAME_DOMAIN,
        )
        return LinkRequested(correlation_id=data.link_id, producer="test", data=data)


async def _verdict(stack: LocalStack, event: LinkRequested) -> tuple[object, float]:
    """The one event the verifier published, and how long the check took (printed only:
    timed assertions are not allowed; the figures go into the report)."""
    deps = _deps(stack)
    started = time.monotonic()
    await verify_link(event, deps)
    took = time.monotonic() - started
    assert isinstance(deps.publisher, RecordingPublisher)
    [published] = deps.publisher.events
    return published, took


@pytest.mark.parametrize(
    ("protocol", "listener", "typed"),
    [
        ("imap", "ssl", "starttls"),  # STARTTLS on the implicit-TLS IMAP port
        ("smtp", "ssl", "starttls"),  # STARTTLS on the implicit-TLS SMTP port
        ("imap", "starttls", "ssl"),  # SSL/TLS on the STARTTLS IMAP port
        ("smtp", "starttls", "ssl"),  # SSL/TLS on the STARTTLS SMTP port
    ],
)
async def test_security_chosen_wrong_for_the_port_ends_in_security_mismatch(
    local_stack: LocalStack, protocol: str, listener: str, typed: str
) -> None:
    mailbox = Mailbox(local_stack)
    port = mailbox.ports[protocol, listener]
    wrong = {protocol: (port, typed)}
    event, took = await _verdict(local_stack, mailbox.request(**wrong))  # type: ignore[arg-type]
    print(f"{protocol} {typed} on the {listener} port: reported after {took:.2f} s")
    assert isinstance(event, VerificationFailed)
    failure = event.data.failure
    assert failure.code is FailureCode.SECURITY_MISMATCH
    assert failure.detail == (
        f"{protocol.upper()} port {port} expects {WORDS[listener]}, not {WORDS[typed]}: "
        f"set its security to {listener}"
    )
    assert failure.other_failures == ()


async def test_starttls_on_both_tls_ports_names_both(local_stack: LocalStack) -> None:
    mailbox = Mailbox(local_stack)
    imap_port, smtp_port = mailbox.ports["imap", "ssl"], mailbox.ports["smtp", "ssl"]
    request = mailbox.request(imap=(imap_port, "starttls"), smtp=(smtp_port, "starttls"))
    event, _ = await _verdict(local_stack, request)
    assert isinstance(event, VerificationFailed)
    failure = event.data.failure
    assert failure.code is FailureCode.SECURITY_MISMATCH
    assert failure.detail == (
        f"IMAP port {imap_port} expects SSL/TLS, not STARTTLS: set its security to ssl; "
        f"SMTP port {smtp_port} expects SSL/TLS, not STARTTLS: set its security to ssl"
    )


async def test_the_right_settings_still_link(local_stack: LocalStack) -> None:
    mailbox = Mailbox(local_stack)
    starttls = (mailbox.ports["imap", "starttls"], "starttls")
    event, _ = await _verdict(local_stack, mailbox.request(imap=starttls))
    assert isinstance(event, MailboxVerified)


async def test_a_wrong_imap_password_and_a_wrong_smtp_security_report_both(
    local_stack: LocalStack,
) -> None:
    mailbox = Mailbox(local_stack)
    wrong_security = (mailbox.ports["smtp", "ssl"], "starttls")
    request = mailbox.request(smtp=wrong_security, imap_password="not-the-password")
    event, took = await _verdict(local_stack, request)
    print(f"wrong IMAP password + STARTTLS on the SMTP TLS port: reported after {took:.2f} s")
    assert isinstance(event, VerificationFailed)
    failure = event.data.failure
    assert failure.code is FailureCode.IMAP_AUTH_FAILED
    assert [(o.code, o.detail) for o in failure.other_failures] == [
        (
            FailureCode.SECURITY_MISMATCH,
            f"SMTP port {wrong_security[0]} expects SSL/TLS, not STARTTLS: set its security to ssl",
        )
    ]
    assert "not-the-password" not in event.model_dump_json()


async def test_a_refused_bare_username_suggests_the_full_address(local_stack: LocalStack) -> None:
    mailbox = Mailbox(local_stack)
    bare = mailbox.address.partition("@")[0]
    event, _ = await _verdict(local_stack, mailbox.request(imap_username=bare))
    assert isinstance(event, VerificationFailed)
    failure = event.data.failure
    assert failure.code is FailureCode.IMAP_AUTH_FAILED
    assert failure.detail.endswith(
        f"; this server may want the full address as login: {mailbox.address}"
    )
