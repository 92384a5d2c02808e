"""The proof of ownership with in-memory ports: which authorities need it, sending, polling
with backoff until the deadline, deleting what was found."""

import contextlib
from collections.abc import AsyncIterator

import pytest

from imap_verifier.domain.ownership import (
    Inbox,
    MailRefused,
    ProofClock,
    ProofFailed,
    ProofMessage,
    ProofPolicy,
    needs_proof,
    prove_ownership,
)
from mailbox_link_contract.events import Authority
from mailbox_link_contract.failures import FailureCode


class FakeTime:
    def __init__(self) -> None:
        self.t = 0.0
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds


class FakeMail:
    """A relay delivering into one INBOX after `delay` seconds, or refusing the address."""

    def __init__(self, time: FakeTime, delay: float | None, refuse: bool = False) -> None:
        self.time, self.delay, self.refuse = time, delay, refuse
        self.sent: list[ProofMessage] = []
        self.inbox: dict[str, tuple[float, str]] = {}
        self.deleted: list[str] = []
        self.opened = 0

    async def send(self, message: ProofMessage) -> None:
        if self.refuse:
            raise MailRefused("550 no such domain")
        self.sent.append(message)
        if self.delay is not None:
            self.inbox["7"] = (self.time.t + self.delay, message.subject)

    async def find(self, header: str, value: str) -> list[str]:
        assert header == "Subject"
        return [
            u for u, (at, subject) in self.inbox.items() if at <= self.time.t and value in subject
        ]

    async def delete(self, ids: list[str]) -> None:
        self.deleted += ids

    @contextlib.asynccontextmanager
    async def open(self) -> AsyncIterator[Inbox]:
        self.opened += 1
        yield self


async def _prove(mail: FakeMail, time: FakeTime, deadline: float = 10.0) -> None:
    await prove_ownership(
        "frank@hosted.test",
        "Acme CRM",
        "verify@mbl.invalid",
        mail,
        mail.open,
        ProofPolicy(deadline=deadline),
        ProofClock(time.now, time.sleep),
        new_token=lambda: "tok123",
    )


@pytest.mark.parametrize(
    ("authority", "needed"),
    [
        (None, True),
        (Authority.OWNERSHIP_PROOF, True),
        (Authority.PROVIDER, False),
        (Authority.PUBLISHED_SETTINGS, False),
        (Authority.SAME_DOMAIN, False),
    ],
)
def test_only_weak_or_absent_authorities_need_a_proof(
    authority: Authority | None, needed: bool
) -> None:
    assert needs_proof(authority) is needed


async def test_a_message_that_arrives_is_found_and_deleted() -> None:
    time = FakeTime()
    mail = FakeMail(time, delay=1.2)
    await _prove(mail, time)
    [message] = mail.sent
    assert message.recipient == "frank@hosted.test"
    assert "tok123" in message.subject
    assert "tok123" in message.body
    assert "Acme CRM" in message.body
    assert "deleted automatically" in message.body
    assert mail.deleted == ["7"]
    # Looked at once, then backing off: 0.25, 0.5, 1 (capped).
    assert time.sleeps == [0.25, 0.5, 1.0]


async def test_a_message_that_never_arrives_is_ownership_unproven_at_the_deadline() -> None:
    time = FakeTime()
    mail = FakeMail(time, delay=None)
    with pytest.raises(ProofFailed) as failed:
        await _prove(mail, time, deadline=5.0)
    assert failed.value.code is FailureCode.OWNERSHIP_UNPROVEN
    assert time.t == pytest.approx(5.0)
    assert max(time.sleeps) <= 1.0
    assert mail.deleted == []


async def test_no_relay_is_ownership_unproven_and_nothing_is_opened() -> None:
    time = FakeTime()
    mail = FakeMail(time, delay=0.0)
    with pytest.raises(ProofFailed) as failed:
        await prove_ownership(
            "a@b.test", "p", "v@x.invalid", None, mail.open, ProofPolicy(deadline=1.0)
        )
    assert failed.value.code is FailureCode.OWNERSHIP_UNPROVEN
    assert "no relay" in failed.value.detail
    assert mail.opened == 0


async def test_an_address_that_takes_no_mail_is_ownership_unproven() -> None:
    time = FakeTime()
    mail = FakeMail(time, delay=0.0, refuse=True)
    with pytest.raises(ProofFailed) as failed:
        await _prove(mail, time)
    assert failed.value.code is FailureCode.OWNERSHIP_UNPROVEN
    assert "550" in failed.value.detail
