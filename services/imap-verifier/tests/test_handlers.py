"""The verifier's handler, with the network replaced by hand-written fakes."""

import ssl

import pytest
from pydantic import SecretStr
from verifier_fakes import NO_RELAY, FakeNetwork, MemoryPendingStore

from imap_verifier.handlers import verify_link
from imap_verifier.ports import VerifierDeps
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
from mailbox_link_shared.mail_probes import Endpoint, ProbeFailed
from mailbox_link_shared.publishing import RecordingPublisher

BOX = SecretBox({"k1": SecretStr(generate_key())}, "k1")
ADDRESS = "alice@example.org"


def _deps(network: FakeNetwork) -> VerifierDeps:
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
    )


def _requested() -> LinkRequested:
    imap = ServerSettings(host="imap.example.org", port=993, security="ssl", username=ADDRESS)
    smtp = ServerSettings(
        host="smtp.example.org", port=587, security="starttls", username="smtp-user"
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
        # A trusted authority: these tests are about the logins (the proof has its own).
        authority=Authority.SAME_DOMAIN,
    )
    return LinkRequested(correlation_id="l1", producer="test", data=data)


async def test_mailbox_verified_when_both_logins_work() -> None:
    network = FakeNetwork()
    deps = _deps(network)
    await verify_link(_requested(), deps)
    assert sorted(network.logins) == [
        ("imap", ADDRESS, "imap-pw"),
        ("smtp", "smtp-user", "smtp-pw"),
    ]
    assert isinstance(deps.publisher, RecordingPublisher)
    [event] = deps.publisher.events
    assert isinstance(event, MailboxVerified)
    sent = _requested().data.credentials
    assert sent is not None
    assert BOX.open(event.data.verified_credentials, ADDRESS) == BOX.open(sent, ADDRESS)


@pytest.mark.parametrize(
    ("imap_failure", "smtp_failure", "reported"),
    [
        (FailureCode.IMAP_AUTH_FAILED, None, FailureCode.IMAP_AUTH_FAILED),
        (None, FailureCode.SMTP_AUTH_FAILED, FailureCode.SMTP_AUTH_FAILED),
        (FailureCode.POP3_ONLY, FailureCode.SMTP_UNREACHABLE, FailureCode.POP3_ONLY),
    ],
)
async def test_failure_reports_imaps_reason_first(
    imap_failure: FailureCode | None, smtp_failure: FailureCode | None, reported: FailureCode
) -> None:
    deps = _deps(FakeNetwork(imap_failure, smtp_failure))
    await verify_link(_requested(), deps)
    assert isinstance(deps.publisher, RecordingPublisher)
    [event] = deps.publisher.events
    assert isinstance(event, VerificationFailed)
    assert event.data.failure.code is reported
    assert event.data.failure.remediation
    assert "imap-pw" not in event.model_dump_json()


async def test_a_secret_that_cannot_be_opened_fails_the_link_instead_of_leaving_it_pending() -> (
    None
):
    network = FakeNetwork()
    deps = _deps(network)
    other_box = SecretBox({"k9": SecretStr(generate_key())}, "k9")
    event = _requested()
    sealed = other_box.seal('{"imap_password": "p", "smtp_password": "p"}', ADDRESS)
    unreadable = event.model_copy(
        update={"data": event.data.model_copy(update={"credentials": sealed})}
    )
    await verify_link(unreadable, deps)
    assert network.logins == []
    assert isinstance(deps.publisher, RecordingPublisher)
    [failed] = deps.publisher.events
    assert isinstance(failed, VerificationFailed)
    assert failed.data.failure.code is FailureCode.INTERNAL_ERROR


class PortSensitiveNetwork(FakeNetwork):
    """SMTP answers only on port 587 with STARTTLS; IMAP answers as scripted."""

    async def probe_smtp(
        self, ep: Endpoint, user: str, password: str, tls: ssl.SSLContext, t: float
    ) -> None:
        self.logins.append(("smtp", f"{ep.port}/{ep.security}", password))
        if (ep.port, ep.security) != (587, "starttls"):
            raise ProbeFailed(FailureCode.SMTP_UNREACHABLE, "connection refused")


def _requested_with_smtp(port: int, security: str) -> LinkRequested:
    event = _requested()
    smtp = event.data.smtp.model_copy(update={"port": port, "security": security})
    return event.model_copy(update={"data": event.data.model_copy(update={"smtp": smtp})})


async def test_a_working_other_port_is_named_when_implicit_tls_on_465_fails() -> None:
    network = PortSensitiveNetwork()
    deps = _deps(network)
    await verify_link(_requested_with_smtp(465, "ssl"), deps)
    [event] = deps.publisher.events  # type: ignore[attr-defined]
    assert isinstance(event, VerificationFailed)
    assert event.data.failure.code is FailureCode.OTHER_PORT_WORKS
    assert "use port 587, security starttls" in event.data.failure.detail
    assert ("smtp", "587/starttls", "smtp-pw") in network.logins


async def test_no_other_port_is_suggested_when_it_fails_too() -> None:
    network = PortSensitiveNetwork()
    deps = _deps(network)
    # 2525 has no standard other way: the original failure stands.
    await verify_link(_requested_with_smtp(2525, "ssl"), deps)
    [event] = deps.publisher.events  # type: ignore[attr-defined]
    assert event.data.failure.code is FailureCode.SMTP_UNREACHABLE


async def test_a_wrong_password_never_tries_another_port() -> None:
    network = FakeNetwork(smtp_failure=FailureCode.SMTP_AUTH_FAILED)
    deps = _deps(network)
    await verify_link(_requested_with_smtp(465, "ssl"), deps)
    [event] = deps.publisher.events  # type: ignore[attr-defined]
    assert event.data.failure.code is FailureCode.SMTP_AUTH_FAILED
    assert [kind for kind, _, _ in network.logins].count("smtp") == 1
