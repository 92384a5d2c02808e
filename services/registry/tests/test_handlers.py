import pytest
from pydantic import SecretStr

from mailbox_link_shared.crypto import SecretBox, generate_key
from mailbox_link_shared.events import (
    LinkRejected,
    MailboxLinked,
    MailboxOwner,
    MailboxUnlinked,
    MailboxVerified,
    MailboxVerifiedData,
    ServerSettings,
)
from mailbox_link_shared.failures import FailureCode
from mailbox_link_shared.publishing import RecordingPublisher
from registry import handlers
from registry.domain.plans import DEFAULT_PLANS, PlanTable
from registry.handlers import RegistryDeps

from .fakes import InMemoryMailboxStore

ALICE = MailboxOwner(account_id="acme", user_id="alice")
BOB = MailboxOwner(account_id="globex", user_id="bob")


@pytest.fixture
def deps() -> RegistryDeps:
    return RegistryDeps(
        InMemoryMailboxStore(), RecordingPublisher(), PlanTable(DEFAULT_PLANS, "basic")
    )


def _verified(owner: MailboxOwner, address: str, link_id: str) -> MailboxVerified:
    server = ServerSettings(host="mail.example.org", port=993, security="ssl", username=address)
    sealed = SecretBox({"k": SecretStr(generate_key())}, "k").seal("{}", address)
    data = MailboxVerifiedData(
        link_id=link_id,
        owner=owner,
        address=address,
        provider="imap",
        imap=server,
        smtp=server,
        credentials=sealed,
    )
    return MailboxVerified(correlation_id=link_id, producer="test", data=data)


def _last(deps: RegistryDeps) -> object:
    assert isinstance(deps.publisher, RecordingPublisher)
    return deps.publisher.events[-1]


async def test_verified_mailbox_is_linked(deps: RegistryDeps) -> None:
    await handlers.when_mailbox_verified_link_mailbox(_verified(ALICE, "a@example.org", "l1"), deps)
    linked = _last(deps)
    assert isinstance(linked, MailboxLinked)
    assert linked.data.owner == ALICE
    found = await handlers.find_owner("a@example.org", deps)
    assert found is not None
    assert found.owner == ALICE


async def test_second_account_cannot_link_a_linked_mailbox(deps: RegistryDeps) -> None:
    await handlers.when_mailbox_verified_link_mailbox(_verified(ALICE, "a@example.org", "l1"), deps)
    await handlers.when_mailbox_verified_link_mailbox(_verified(BOB, "a@example.org", "l2"), deps)
    rejected = _last(deps)
    assert isinstance(rejected, LinkRejected)
    assert rejected.data.failure.code is FailureCode.ALREADY_LINKED_ELSEWHERE
    assert "acme" not in rejected.model_dump_json()  # the other account stays secret


async def test_user_at_plan_limit_is_rejected_with_the_limit(deps: RegistryDeps) -> None:
    await handlers.assign_plan(ALICE, "free", deps)
    await handlers.when_mailbox_verified_link_mailbox(_verified(ALICE, "a@example.org", "l1"), deps)
    await handlers.when_mailbox_verified_link_mailbox(_verified(ALICE, "b@example.org", "l2"), deps)
    rejected = _last(deps)
    assert isinstance(rejected, LinkRejected)
    assert rejected.data.failure.code is FailureCode.PLAN_LIMIT_REACHED
    assert rejected.data.plan_limit == 1


async def test_redelivered_verification_repeats_the_same_answer(deps: RegistryDeps) -> None:
    event = _verified(ALICE, "a@example.org", "l1")
    await handlers.when_mailbox_verified_link_mailbox(event, deps)
    await handlers.when_mailbox_verified_link_mailbox(event, deps)
    assert isinstance(deps.publisher, RecordingPublisher)
    first, second = deps.publisher.events
    assert first.event_id == second.event_id
    assert len(await handlers.list_mailboxes(ALICE, deps)) == 1


async def test_unlinked_mailbox_can_be_linked_by_another_account(deps: RegistryDeps) -> None:
    await handlers.when_mailbox_verified_link_mailbox(_verified(ALICE, "a@example.org", "l1"), deps)
    assert not await handlers.unlink_mailbox(BOB, "a@example.org", deps)
    assert await handlers.unlink_mailbox(ALICE, "a@example.org", deps)
    assert isinstance(_last(deps), MailboxUnlinked)
    await handlers.when_mailbox_verified_link_mailbox(_verified(BOB, "a@example.org", "l2"), deps)
    linked = _last(deps)
    assert isinstance(linked, MailboxLinked)
    assert linked.data.owner == BOB
