"""Which failures a check reports and in what order, how long a failed check waits for the
other one (FAILURE_GRACE, not the whole deadline), and the full-address hint: with a scripted
network, no server."""

import asyncio
import ssl
from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from pydantic import SecretStr
from verifier_fakes import NO_RELAY, MemoryPendingStore

from imap_verifier.domain.failure_report import (
    ChecksFailed,
    all_failures,
    report,
    with_login_hint,
)
from imap_verifier.handlers import FAILURE_GRACE, verify_link
from imap_verifier.ports import VerifierDeps
from mailbox_link_contract.events import (
    Authority,
    LinkRequested,
    LinkRequestedData,
    MailboxOwner,
    ServerSettings,
    VerificationFailed,
)
from mailbox_link_contract.failures import FailureCode
from mailbox_link_shared.crypto import SecretBox, generate_key
from mailbox_link_shared.mail_probes import Endpoint, ProbeFailed
from mailbox_link_shared.network_policy import IPNetwork
from mailbox_link_shared.publishing import RecordingPublisher

BOX = SecretBox({"k1": SecretStr(generate_key())}, "k1")
ADDRESS = "alice@example.org"
# Far beyond anything these tests wait: a check that used its whole deadline would show as a
# `timeout` among the reported failures.
DEADLINE = 120.0
NEVER = float("inf")


@dataclass(frozen=True)
class Answer:
    """How a scripted server answers a login: after `delay` seconds, with `failure` or not."""

    delay: float = 0.0
    failure: ProbeFailed | None = None


class ScriptedNetwork:
    """One scripted answer per protocol; ports without a standard other way, so these tests
    see no other-port try."""

    def __init__(self, imap: Answer, smtp: Answer) -> None:
        self.answers = {2993: imap, 2525: smtp}

    async def resolve(
        self, server: ServerSettings, allowlist: Sequence[IPNetwork], timeout: float
    ) -> Endpoint:
        return Endpoint(server.host, "192.0.2.10", server.port, server.security)

    async def probe(
        self, ep: Endpoint, user: str, password: str, tls: ssl.SSLContext, timeout: float
    ) -> None:
        answer = self.answers[ep.port]
        if answer.delay > timeout:
            await asyncio.sleep(timeout)
            raise ProbeFailed(FailureCode.TIMEOUT, f"no answer within {timeout:g} s")
        await asyncio.sleep(answer.delay)
        if answer.failure is not None:
            raise answer.failure


def _deps(network: ScriptedNetwork) -> VerifierDeps:
    return VerifierDeps(
        publisher=RecordingPublisher(),
        secret_box=BOX,
        resolve=network.resolve,
        probe_imap=network.probe,
        probe_smtp=network.probe,
        tls=ssl.create_default_context(),
        allowlist=(),
        timeout=DEADLINE,
        store=MemoryPendingStore(),
        proof=NO_RELAY,
    )


def _requested(imap_username: str = ADDRESS, smtp_username: str = ADDRESS) -> LinkRequested:
    imap = ServerSettings(
        host="imap.example.org", port=2993, security="ssl", username=imap_username
    )
    smtp = ServerSettings(
        host="smtp.example.org", port=2525, security="ssl", username=smtp_username
    )
    sealed = BOX.seal('{"imap_password": "imap-pw", "smtp_password": "smtp-pw"}', ADDRESS)
    data = LinkRequestedData(
        link_id="l1",
        owner=MailboxOwner(account_id="acme", user_id="u1"),
        address=ADDRESS,
        provider="imap",
        imap=imap,
        smtp=smtp,
        credentials=sealed,
        authority=Authority.SAME_DOMAIN,
    )
    return LinkRequested(correlation_id="l1", producer="test", data=data)


async def _reported(
    imap: Answer, smtp: Answer, event: LinkRequested | None = None
) -> VerificationFailed:
    deps = _deps(ScriptedNetwork(imap, smtp))
    await verify_link(event or _requested(), deps)
    assert isinstance(deps.publisher, RecordingPublisher)
    [published] = deps.publisher.events
    assert isinstance(published, VerificationFailed)
    return published


def _codes(event: VerificationFailed) -> list[FailureCode]:
    failure = event.data.failure
    return [failure.code, *(other.code for other in failure.other_failures)]


IMAP_REFUSED = ProbeFailed(
    FailureCode.IMAP_AUTH_FAILED, "login rejected (NO [AUTHENTICATIONFAILED])", login_refused=True
)
SMTP_REFUSED = ProbeFailed(
    FailureCode.SMTP_AUTH_FAILED, "login rejected (535 5.7.8)", login_refused=True
)
SMTP_MISMATCH = ProbeFailed(
    FailureCode.SECURITY_MISMATCH,
    "SMTP port 465 expects SSL/TLS, not STARTTLS: set its security to ssl",
)


async def test_a_wrong_imap_password_and_a_wrong_smtp_security_are_both_reported() -> None:
    # The mismatch is known when the probe's TLS try ends: after the plaintext wait.
    smtp = Answer(FAILURE_GRACE / 2, SMTP_MISMATCH)
    event = await _reported(Answer(0.0, IMAP_REFUSED), smtp)
    failure = event.data.failure
    assert _codes(event) == [FailureCode.IMAP_AUTH_FAILED, FailureCode.SECURITY_MISMATCH]
    [other] = failure.other_failures
    assert other.detail == SMTP_MISMATCH.detail
    assert other.message
    assert other.remediation


async def test_imaps_failure_is_the_primary_one_even_when_smtps_came_first() -> None:
    event = await _reported(Answer(0.2, IMAP_REFUSED), Answer(0.0, SMTP_REFUSED))
    assert _codes(event) == [FailureCode.IMAP_AUTH_FAILED, FailureCode.SMTP_AUTH_FAILED]


async def test_a_failure_does_not_wait_for_a_silent_other_check() -> None:
    """The silent SMTP check is given FAILURE_GRACE, not its 120 s deadline: had it been
    awaited to the end, its `timeout` would be among the failures."""
    event = await _reported(Answer(0.0, IMAP_REFUSED), Answer(NEVER))
    assert _codes(event) == [FailureCode.IMAP_AUTH_FAILED]


async def test_a_failure_of_smtp_alone_is_reported_when_imap_is_silent() -> None:
    event = await _reported(Answer(NEVER), Answer(0.0, SMTP_REFUSED))
    assert _codes(event) == [FailureCode.SMTP_AUTH_FAILED]


async def test_a_success_gives_the_other_check_its_whole_deadline() -> None:
    """Only a failure starts the grace: a slower failure after a working IMAP login is still
    reported."""
    smtp = Answer(FAILURE_GRACE + 0.5, SMTP_REFUSED)
    event = await _reported(Answer(0.0), smtp)
    assert _codes(event) == [FailureCode.SMTP_AUTH_FAILED]


async def test_a_refused_bare_username_is_told_to_try_the_full_address() -> None:
    event = await _reported(
        Answer(0.0, IMAP_REFUSED),
        Answer(0.0, SMTP_REFUSED),
        _requested(imap_username="alice", smtp_username=ADDRESS),
    )
    failure = event.data.failure
    assert failure.detail == (
        "login rejected (NO [AUTHENTICATIONFAILED]); "
        "this server may want the full address as login: alice@example.org"
    )
    [smtp] = failure.other_failures
    assert smtp.detail == "login rejected (535 5.7.8)"  # a full address already: no hint


def _server(username: str) -> ServerSettings:
    return ServerSettings(host="imap.example.org", port=993, security="ssl", username=username)


@pytest.mark.parametrize(
    ("failure", "username"),
    [
        # No mechanism of ours offered: the login itself was never refused.
        (ProbeFailed(FailureCode.IMAP_AUTH_FAILED, "server does not offer password login"), "a"),
        (IMAP_REFUSED, "alice@example.org"),
        (ProbeFailed(FailureCode.TIMEOUT, "no answer within 15 s"), "alice"),
    ],
)
def test_no_full_address_hint_when_it_cannot_help(failure: ProbeFailed, username: str) -> None:
    assert with_login_hint(failure, _server(username), ADDRESS) is failure


def test_the_report_lists_each_other_failure_once_after_the_primary() -> None:
    checks = ChecksFailed([IMAP_REFUSED, SMTP_MISMATCH])
    assert all_failures(checks) == (IMAP_REFUSED, SMTP_MISMATCH)
    reported = report(checks)
    assert (reported.code, reported.detail) == (IMAP_REFUSED.code, IMAP_REFUSED.detail)
    assert [o.code for o in reported.other_failures] == [FailureCode.SECURITY_MISMATCH]
    alone = report(SMTP_REFUSED)
    assert (alone.code, alone.other_failures) == (FailureCode.SMTP_AUTH_FAILED, ())


def test_failures_with_one_code_share_an_entry_naming_each_detail() -> None:
    imap = ProbeFailed(
        FailureCode.SECURITY_MISMATCH,
        "IMAP port 993 expects SSL/TLS, not STARTTLS: set its security to ssl",
    )
    reported = report(ChecksFailed([imap, SMTP_MISMATCH]))
    assert reported.code is FailureCode.SECURITY_MISMATCH
    assert reported.detail == f"{imap.detail}; {SMTP_MISMATCH.detail}"
    assert reported.other_failures == ()
    timeout = ProbeFailed(FailureCode.TIMEOUT, "no answer within 15 s")
    assert report(ChecksFailed([timeout, timeout])).detail == "no answer within 15 s"
