"""The verifier's health checks of password mailboxes (docs/adr/0023), with the network and the
limits' store faked: logins as stored, the usual failure codes, our own limits answered with a
code that never means the credentials were refused, and no secret in what is published."""

import ssl
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import SecretStr
from verifier_fakes import NO_RELAY, FakeNetwork, MemoryPendingStore

from imap_verifier.handlers import when_check_requested_log_in
from imap_verifier.login_limits import LoginLimits
from imap_verifier.ports import VerifierDeps
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
from mailbox_link_shared.publishing import RecordingPublisher
from mailbox_link_shared.rate_limits import BackOff, Limit, MemorySlots, RateLimiter

NOW = datetime(2026, 12, 8, 3, 0, tzinfo=UTC)
BOX = SecretBox({"k1": SecretStr(generate_key())}, "k1")
ADDRESS = "alice@example.org"


def _deps(network: FakeNetwork, limits: LoginLimits | None = None) -> VerifierDeps:
    return VerifierDeps(
        publisher=RecordingPublisher(),
        secret_box=BOX,
        resolve=network.resolve,
        probe_imap=network.probe_imap,
        probe_smtp=network.probe_smtp,
        tls=ssl.create_default_context(),
        allowlist=(),
        timeout=5.0,
        store=MemoryPendingStore(),
        proof=NO_RELAY,
        clock=lambda: NOW,
        login_limits=limits,
    )


def _limits(per_login: int = 100) -> LoginLimits:
    return LoginLimits(
        RateLimiter(MemorySlots()),
        Limit("login_attempts", per_login, timedelta(hours=1)),
        Limit("host_logins", 100, timedelta(minutes=1)),
        BackOff(free_failures=1, first_wait=timedelta(minutes=15)),
    )


def _check_requested(
    n: int = 1,
    auth: AuthMethod = AuthMethod.PASSWORD,
    smtp_port: int = 465,
    address: str = ADDRESS,
) -> MailboxCheckRequested:
    imap = ServerSettings(host="imap.example.org", port=993, security="ssl", username=ADDRESS)
    smtp = ServerSettings(host="smtp.example.org", port=smtp_port, security="ssl", username="s")
    sealed = BOX.seal('{"imap_password": "imap-pw", "smtp_password": "smtp-pw"}', address)
    data = MailboxCheckRequestedData(
        check_id=f"m1-{n}",
        mailbox_id="m1",
        link_id="l1",
        owner=MailboxOwner(account_id="acme", user_id="u1"),
        address=ADDRESS,
        provider=ProviderType.IMAP if auth is AuthMethod.PASSWORD else ProviderType.GOOGLE,
        auth=auth,
        imap=imap,
        smtp=smtp,
        credentials=sealed if auth is AuthMethod.PASSWORD else None,
    )
    return MailboxCheckRequested(correlation_id="l1", producer="registry", data=data)


def _answers(deps: VerifierDeps) -> list[MailboxChecked]:
    assert isinstance(deps.publisher, RecordingPublisher)
    answers = [e for e in deps.publisher.events if isinstance(e, MailboxChecked)]
    assert len(answers) == len(deps.publisher.events)
    for answer in answers:
        assert "imap-pw" not in answer.model_dump_json()
        assert "smtp-pw" not in answer.model_dump_json()
    return answers


async def test_a_mailbox_whose_logins_work_is_checked_ok() -> None:
    network = FakeNetwork()
    deps = _deps(network)
    await when_check_requested_log_in(_check_requested(), deps)
    [answer] = _answers(deps)
    assert answer.data.failure is None
    assert (answer.data.check_id, answer.data.mailbox_id, answer.data.link_id) == (
        "m1-1",
        "m1",
        "l1",
    )
    assert sorted(network.logins) == [("imap", ADDRESS, "imap-pw"), ("smtp", "s", "smtp-pw")]


@pytest.mark.parametrize(
    ("imap_failure", "smtp_failure", "reported"),
    [
        (FailureCode.IMAP_AUTH_FAILED, None, FailureCode.IMAP_AUTH_FAILED),
        (None, FailureCode.SMTP_AUTH_FAILED, FailureCode.SMTP_AUTH_FAILED),
        (FailureCode.IMAP_UNREACHABLE, None, FailureCode.IMAP_UNREACHABLE),
        (FailureCode.TIMEOUT, FailureCode.SMTP_AUTH_FAILED, FailureCode.TIMEOUT),
    ],
)
async def test_a_failed_login_is_answered_with_its_code(
    imap_failure: FailureCode | None, smtp_failure: FailureCode | None, reported: FailureCode
) -> None:
    deps = _deps(FakeNetwork(imap_failure, smtp_failure))
    await when_check_requested_log_in(_check_requested(), deps)
    [answer] = _answers(deps)
    assert answer.data.failure is not None
    assert answer.data.failure.code is reported


async def test_a_check_never_tries_another_port() -> None:
    network = FakeNetwork(smtp_failure=FailureCode.SMTP_UNREACHABLE)
    deps = _deps(network)
    await when_check_requested_log_in(_check_requested(smtp_port=465), deps)
    [answer] = _answers(deps)
    assert answer.data.failure is not None
    assert answer.data.failure.code is FailureCode.SMTP_UNREACHABLE
    assert [kind for kind, _, _ in network.logins].count("smtp") == 1


async def test_an_oauth_mailbox_is_left_to_the_broker() -> None:
    network = FakeNetwork()
    deps = _deps(network)
    await when_check_requested_log_in(_check_requested(auth=AuthMethod.OAUTH), deps)
    assert _answers(deps) == []
    assert network.logins == []


async def test_credentials_sealed_for_another_address_are_an_internal_error_not_a_refusal() -> None:
    network = FakeNetwork()
    deps = _deps(network)
    await when_check_requested_log_in(_check_requested(address="mallory@example.org"), deps)
    [answer] = _answers(deps)
    assert answer.data.failure is not None
    assert answer.data.failure.code is FailureCode.INTERNAL_ERROR
    assert not refuses_credentials(answer.data.failure.code)
    assert network.logins == []


async def test_a_check_refused_by_our_own_limits_does_not_look_like_a_wrong_password() -> None:
    network = FakeNetwork()
    deps = _deps(network, _limits(per_login=1))
    await when_check_requested_log_in(_check_requested(1), deps)
    await when_check_requested_log_in(_check_requested(2), deps)
    first, second = _answers(deps)
    assert first.data.failure is None
    assert second.data.failure is not None
    assert second.data.failure.code is FailureCode.TOO_MANY_ATTEMPTS
    assert not refuses_credentials(second.data.failure.code)
    assert len(network.logins) == 2  # the first check's IMAP and SMTP only


async def test_refused_checks_do_not_put_the_login_into_back_off() -> None:
    """The stored password is no guess: checks failing must not lock out the reconnect (or the
    next check) that would show the new password works."""
    network = FakeNetwork(imap_failure=FailureCode.IMAP_AUTH_FAILED)
    deps = _deps(network, _limits())
    for n in range(3):
        await when_check_requested_log_in(_check_requested(n), deps)
    codes = [answer.data.failure.code for answer in _answers(deps) if answer.data.failure]
    assert codes == [FailureCode.IMAP_AUTH_FAILED] * 3
