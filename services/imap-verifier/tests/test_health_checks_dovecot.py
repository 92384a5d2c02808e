"""Health checks of password mailboxes against the local stack's real Dovecot, through the real
resolver and probes: the stored password works (ok), the user changed it at the server
(imap_auth_failed, a code that refuses the credentials), the server is away (imap_unreachable,
which never does)."""

import functools
import json
import secrets
import socket
import ssl
import statistics
import time

from pydantic import SecretStr
from verifier_fakes import NO_RELAY, MemoryPendingStore

from imap_verifier.handlers import when_check_requested_log_in
from imap_verifier.ports import VerifierDeps
from localinfra.stack import LocalStack
from mailbox_link_contract.events import (
    AuthMethod,
    MailboxChecked,
    MailboxCheckRequested,
    MailboxCheckRequestedData,
    MailboxOwner,
    ProviderType,
    ServerSettings,
)
from mailbox_link_contract.failures import FailureCode, refuses_credentials
from mailbox_link_shared.crypto import SecretBox, generate_key
from mailbox_link_shared.mail_probes import probe_imap, probe_smtp
from mailbox_link_shared.mail_resolver import resolve_endpoint as resolve_mail_endpoint
from mailbox_link_shared.network_policy import parse_networks, parse_ports
from mailbox_link_shared.publishing import RecordingPublisher

# The stack's servers listen on ephemeral ports, outside the default mail ports.
resolve_endpoint = functools.partial(
    resolve_mail_endpoint, allowed_ports=parse_ports(["32768-60999"])
)
BOX = SecretBox({"k1": SecretStr(generate_key())}, "k1")


def _deps(stack: LocalStack) -> VerifierDeps:
    return VerifierDeps(
        publisher=RecordingPublisher(),
        secret_box=BOX,
        resolve=resolve_endpoint,
        probe_imap=probe_imap,
        probe_smtp=probe_smtp,
        tls=ssl.create_default_context(cafile=stack.endpoints.ca_file),
        allowlist=parse_networks(["127.0.0.0/8"]),
        timeout=15.0,
        store=MemoryPendingStore(),
        proof=NO_RELAY,
    )


def _check(
    stack: LocalStack, address: str, password: str, imap_port: int | None = None
) -> MailboxCheckRequested:
    e = stack.endpoints
    imap = ServerSettings(
        host=e.tls_hostname, port=imap_port or e.imaps_port, security="ssl", username=address
    )
    smtp = imap.model_copy(update={"port": e.submissions_port})
    secret = json.dumps({"imap_password": password, "smtp_password": password})
    data = MailboxCheckRequestedData(
        check_id=f"m-{secrets.token_hex(4)}-1",
        mailbox_id=f"m-{secrets.token_hex(4)}",
        link_id=f"l-{secrets.token_hex(4)}",
        owner=MailboxOwner(account_id="acme", user_id="u1"),
        address=address,
        provider=ProviderType.IMAP,
        auth=AuthMethod.PASSWORD,
        imap=imap,
        smtp=smtp,
        credentials=BOX.seal(secret, address),
    )
    return MailboxCheckRequested(correlation_id=data.link_id, producer="test", data=data)


async def _answer(stack: LocalStack, request: MailboxCheckRequested) -> MailboxChecked:
    deps = _deps(stack)
    await when_check_requested_log_in(request, deps)
    assert isinstance(deps.publisher, RecordingPublisher)
    [answer] = deps.publisher.events
    assert isinstance(answer, MailboxChecked)
    assert answer.data.check_id == request.data.check_id
    return answer


def _closed_port() -> int:
    """A loopback port in the allowed range where nothing listens (any more)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_a_stored_password_that_works_is_checked_ok(local_stack: LocalStack) -> None:
    address, password = f"check-{secrets.token_hex(4)}@example.org", secrets.token_urlsafe(12)
    local_stack.add_mail_user(address, password)
    answer = await _answer(local_stack, _check(local_stack, address, password))
    assert answer.data.failure is None


async def test_a_password_changed_at_the_server_refuses_the_credentials(
    local_stack: LocalStack,
) -> None:
    address, password = f"check-{secrets.token_hex(4)}@example.org", secrets.token_urlsafe(12)
    local_stack.add_mail_user(address, password)
    request = _check(local_stack, address, password)
    assert (await _answer(local_stack, request)).data.failure is None

    local_stack.set_mail_password(address, secrets.token_urlsafe(12))

    failure = (await _answer(local_stack, request)).data.failure
    assert failure is not None
    assert failure.code is FailureCode.IMAP_AUTH_FAILED
    assert refuses_credentials(failure.code)
    assert [other.code for other in failure.other_failures] == [FailureCode.SMTP_AUTH_FAILED]
    assert password not in failure.model_dump_json()


async def test_a_server_that_is_away_is_unreachable_not_a_refusal(
    local_stack: LocalStack,
) -> None:
    address, password = f"check-{secrets.token_hex(4)}@example.org", secrets.token_urlsafe(12)
    local_stack.add_mail_user(address, password)
    request = _check(local_stack, address, password, imap_port=_closed_port())
    failure = (await _answer(local_stack, request)).data.failure
    assert failure is not None
    assert failure.code in (FailureCode.IMAP_UNREACHABLE, FailureCode.TIMEOUT)
    assert not refuses_credentials(failure.code)


async def test_the_cost_of_one_check(local_stack: LocalStack) -> None:
    """Prints what one health check of a password mailbox costs on loopback (IMAPS login +
    SELECT + logout beside SMTPS AUTH): the median and slowest of 20, after one warm-up."""
    address, password = f"check-{secrets.token_hex(4)}@example.org", secrets.token_urlsafe(12)
    local_stack.add_mail_user(address, password)
    request = _check(local_stack, address, password)
    took: list[float] = []
    for _ in range(21):
        started = time.perf_counter()
        assert (await _answer(local_stack, request)).data.failure is None
        took.append(time.perf_counter() - started)
    took = sorted(took[1:])
    print(
        f"password mailbox check: median {statistics.median(took) * 1000:.1f} ms, "
        f"slowest {took[-1] * 1000:.1f} ms (n={len(took)})"
    )
