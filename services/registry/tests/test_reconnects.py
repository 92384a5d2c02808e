"""Reconnect in place (ADR 0019): the owner of a linked mailbox links it again and it keeps its
mailbox_id and plan slot; on in-memory storage, with competing requests cutting in."""

import asyncio
from datetime import timedelta
from typing import TypeVar

import pytest
from pydantic import SecretStr

from mailbox_link_contract.events import (
    Envelope,
    Failure,
    LinkRejected,
    LinkRequested,
    LinkReserved,
    MailboxLinked,
    MailboxOwner,
    MailboxReconnected,
    MailboxReconnectRequired,
    MailboxReconnectRequiredData,
    MailboxUnlinked,
    MailboxVerified,
    MailboxVerifiedData,
    ProviderType,
    ServerSettings,
    UnlinkedBy,
)
from mailbox_link_contract.failures import FailureCode
from mailbox_link_shared.crypto import SecretBox, generate_key
from mailbox_link_shared.publishing import RecordingPublisher
from registry import handlers
from registry.decisions import load
from registry.domain.links import LinkRecord, LinkState, MailboxDetails
from registry.domain.plans import DEFAULT_PLANS, PlanTable
from registry.handlers import RegistryDeps, UnlinkResult
from registry_fakes import FakeClock, InMemoryRegistryStore, failed_event, request_data

ALICE = MailboxOwner(account_id="acme", user_id="alice")
ADDRESS = "box@example.org"
TTL = timedelta(minutes=15)
PLANS = PlanTable(DEFAULT_PLANS, "free")  # one mailbox: every test runs at the plan's limit
GRACE = timedelta(seconds=5)
NEW_IMAP = ServerSettings(host="imap2.example.org", port=993, security="ssl", username=ADDRESS)
_BOX = SecretBox({"k": SecretStr(generate_key())}, "k")
E = TypeVar("E", bound=Envelope)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(clock: FakeClock) -> InMemoryRegistryStore:
    return InMemoryRegistryStore(clock)


@pytest.fixture
def deps(store: InMemoryRegistryStore, clock: FakeClock) -> RegistryDeps:
    return RegistryDeps(store, RecordingPublisher(), PLANS, reservation_ttl=TTL, clock=clock)


def _request(link_id: str, reconnect: bool = False) -> LinkRequested:
    data = request_data(ALICE, link_id, ADDRESS).model_copy(update={"reconnect": reconnect})
    return LinkRequested(correlation_id=link_id, producer="link-api", data=data)


def _verified(link_id: str, imap: ServerSettings | None = None) -> MailboxVerified:
    fields = request_data(ALICE, link_id, ADDRESS).model_dump()
    fields["credentials"] = _BOX.seal(f'{{"imap_password": "{link_id}"}}', ADDRESS)
    data = MailboxVerifiedData(**fields)
    if imap is not None:
        data = data.model_copy(update={"imap": imap})
    return MailboxVerified(correlation_id=link_id, producer="imap-verifier", data=data)


def _flag(linked: MailboxLinked) -> MailboxReconnectRequired:
    data = MailboxReconnectRequiredData(
        mailbox_id=linked.data.mailbox_id,
        link_id=linked.data.link_id,
        owner=ALICE,
        address=ADDRESS,
        provider=ProviderType.IMAP,
        failure=Failure.of(FailureCode.RECONNECT_REQUIRED, "password changed"),
    )
    return MailboxReconnectRequired(correlation_id="flag", producer="oauth-broker", data=data)


async def _link(deps: RegistryDeps, link_id: str = "l1") -> MailboxLinked:
    await handlers.when_link_requested_reserve(_request(link_id), deps)
    await handlers.when_mailbox_verified_link(_verified(link_id), deps)
    [linked] = _of(deps, MailboxLinked)
    return linked


async def _flagged(deps: RegistryDeps) -> MailboxLinked:
    linked = await _link(deps)
    await handlers.when_reconnect_required_flag_mailbox(_flag(linked), deps)
    assert (await _mailbox(deps)).reconnect_required is FailureCode.RECONNECT_REQUIRED
    return linked


def _events(deps: RegistryDeps) -> list[Envelope]:
    assert isinstance(deps.publisher, RecordingPublisher)
    return deps.publisher.events


def _of(deps: RegistryDeps, kind: type[E], link_id: str | None = None) -> list[E]:
    return [
        e
        for e in _events(deps)
        if isinstance(e, kind) and (link_id is None or e.correlation_id == link_id)
    ]


def _finals(deps: RegistryDeps, link_id: str) -> list[Envelope]:
    final = (MailboxLinked, MailboxReconnected, LinkRejected)
    return [e for e in _events(deps) if e.correlation_id == link_id and isinstance(e, final)]


async def _mailbox(deps: RegistryDeps) -> MailboxDetails:
    [record] = await handlers.list_mailboxes(ALICE, deps)
    assert record.mailbox is not None
    return record.mailbox


async def _record(deps: RegistryDeps, link_id: str) -> LinkRecord:
    stored = await deps.store.get_link(link_id)
    assert stored is not None
    return await load(stored, deps)


async def test_a_reconnect_required_mailbox_linked_again_is_reconnected_in_place(
    deps: RegistryDeps, store: InMemoryRegistryStore
) -> None:
    linked = await _flagged(deps)
    await handlers.when_link_requested_reserve(_request("r1"), deps)  # no flag needed
    [reserved] = _of(deps, LinkReserved, "r1")
    assert reserved.data.mailbox_id == linked.data.mailbox_id
    assert (await handlers.get_plan(ALICE, deps)).used == 1  # at the free plan's limit
    await handlers.when_mailbox_verified_link(_verified("r1", NEW_IMAP), deps)
    [answer] = _finals(deps, "r1")
    assert isinstance(answer, MailboxReconnected)
    assert answer.data.mailbox_id == linked.data.mailbox_id
    assert answer.data.address == ADDRESS
    assert answer.data.owner == ALICE
    mailbox = await _mailbox(deps)
    assert mailbox.mailbox_id == linked.data.mailbox_id
    assert mailbox.reconnect_required is None
    assert mailbox.imap == NEW_IMAP
    assert mailbox.verified_by == "r1"
    assert mailbox.linked_at == (await _record(deps, "l1")).mailbox.linked_at  # type: ignore[union-attr]
    assert (await handlers.get_plan(ALICE, deps)).used == 1
    # The mailbox's credentials are the reconnect's now; the former ones are gone.
    assert set(store.verifications) == {"r1"}
    assert (await _record(deps, "r1")).state is LinkState.RECONNECTED
    assert store.pending_entries == {}
    owner = await handlers.find_owner(ADDRESS, deps)
    assert owner is not None
    assert owner.link_id == "l1"


async def test_an_active_mailbox_answers_already_linked_unless_reconnect_is_asked(
    deps: RegistryDeps,
) -> None:
    linked = await _link(deps)
    await handlers.when_link_requested_reserve(_request("again"), deps)
    [refused] = _finals(deps, "again")
    assert isinstance(refused, LinkRejected)
    assert refused.data.failure.code is FailureCode.ALREADY_LINKED
    assert refused.data.mailbox_id == linked.data.mailbox_id
    await handlers.when_link_requested_reserve(_request("r1", reconnect=True), deps)
    await handlers.when_mailbox_verified_link(_verified("r1"), deps)
    [answer] = _finals(deps, "r1")
    assert isinstance(answer, MailboxReconnected)
    assert answer.data.mailbox_id == linked.data.mailbox_id


async def test_reconnect_asked_for_a_mailbox_not_linked_is_an_ordinary_link(
    deps: RegistryDeps,
) -> None:
    await handlers.when_link_requested_reserve(_request("r1", reconnect=True), deps)
    [reserved] = _of(deps, LinkReserved, "r1")
    assert reserved.data.mailbox_id is None
    await handlers.when_mailbox_verified_link(_verified("r1"), deps)
    [answer] = _finals(deps, "r1")
    assert isinstance(answer, MailboxLinked)


async def test_a_reconnect_through_another_verifier_is_not_one(deps: RegistryDeps) -> None:
    await _flagged(deps)
    data = request_data(ALICE, "g1", ADDRESS).model_copy(
        update={"provider": ProviderType.GOOGLE, "reconnect": True}
    )
    await handlers.when_link_requested_reserve(
        LinkRequested(correlation_id="g1", producer="link-api", data=data), deps
    )
    [refused] = _finals(deps, "g1")
    assert isinstance(refused, LinkRejected)
    assert refused.data.failure.code is FailureCode.ALREADY_LINKED


async def test_a_failed_reconnect_leaves_the_mailbox_as_it_was(
    deps: RegistryDeps, store: InMemoryRegistryStore
) -> None:
    linked = await _flagged(deps)
    await handlers.when_link_requested_reserve(_request("r1"), deps)
    await handlers.when_verification_failed_release(failed_event(ALICE, "r1", ADDRESS), deps)
    [answer] = _finals(deps, "r1")
    assert isinstance(answer, LinkRejected)
    assert answer.data.failure.code is FailureCode.IMAP_AUTH_FAILED
    mailbox = await _mailbox(deps)
    assert mailbox.mailbox_id == linked.data.mailbox_id
    assert mailbox.reconnect_required is FailureCode.RECONNECT_REQUIRED
    assert mailbox.verified_by is None
    assert set(store.verifications) == {"l1"}
    # A late verification of the failed link changes nothing either.
    await handlers.when_mailbox_verified_link(_verified("r1", NEW_IMAP), deps)
    assert (await _mailbox(deps)).imap != NEW_IMAP
    assert set(store.verifications) == {"l1"}


async def test_an_expired_reconnect_leaves_the_mailbox_as_it_was(
    deps: RegistryDeps, clock: FakeClock
) -> None:
    await _flagged(deps)
    await handlers.when_link_requested_reserve(_request("r1"), deps)
    clock.advance(TTL + timedelta(seconds=1))
    await handlers.finish_pending(deps, GRACE)
    [answer] = _finals(deps, "r1")
    assert isinstance(answer, LinkRejected)
    assert answer.data.failure.code is FailureCode.RESERVATION_EXPIRED
    assert (await _mailbox(deps)).reconnect_required is FailureCode.RECONNECT_REQUIRED


async def test_one_reconnect_of_a_mailbox_at_a_time(deps: RegistryDeps) -> None:
    await _flagged(deps)
    await handlers.when_link_requested_reserve(_request("r1"), deps)
    await handlers.when_link_requested_reserve(_request("r2", reconnect=True), deps)
    [second] = _finals(deps, "r2")
    assert isinstance(second, LinkRejected)
    assert second.data.failure.code is FailureCode.LINK_IN_PROGRESS
    await handlers.when_mailbox_verified_link(_verified("r1"), deps)
    [first] = _finals(deps, "r1")
    assert isinstance(first, MailboxReconnected)
    # Once it ended, the next reconnect may go.
    await handlers.when_link_requested_reserve(_request("r3", reconnect=True), deps)
    await handlers.when_mailbox_verified_link(_verified("r3", NEW_IMAP), deps)
    [third] = _finals(deps, "r3")
    assert isinstance(third, MailboxReconnected)
    assert (await _mailbox(deps)).verified_by == "r3"


async def test_an_unlink_before_the_reconnect_lands_ends_it_unlinked_not_resurrected(
    deps: RegistryDeps, store: InMemoryRegistryStore
) -> None:
    await _flagged(deps)
    await handlers.when_link_requested_reserve(_request("r1"), deps)
    result = await handlers.unlink_mailbox(ADDRESS, deps, ALICE, UnlinkedBy.USER)
    assert result is UnlinkResult.UNLINKED
    await handlers.when_mailbox_verified_link(_verified("r1"), deps)
    [answer] = _finals(deps, "r1")
    assert isinstance(answer, LinkRejected)
    assert answer.data.failure.code is FailureCode.MAILBOX_UNLINKED
    assert await handlers.list_mailboxes(ALICE, deps) == []
    assert store.verifications == {}  # nothing sealed outlives the mailbox or the link


async def test_an_unlink_cutting_in_before_the_mailbox_takes_the_reconnect_wins(
    deps: RegistryDeps, store: InMemoryRegistryStore
) -> None:
    await _flagged(deps)
    await handlers.when_link_requested_reserve(_request("r1"), deps)
    decisions = 0

    async def unlink_at_the_mailboxs_decision() -> None:
        nonlocal decisions
        decisions += 1
        if decisions == 2:  # the reconnect link committed; its mailbox's decision is next
            await handlers.unlink_mailbox(ADDRESS, deps, ALICE, UnlinkedBy.USER)
        else:
            store.cut_in("add_decision", unlink_at_the_mailboxs_decision)

    store.cut_in("add_decision", unlink_at_the_mailboxs_decision)
    await handlers.when_mailbox_verified_link(_verified("r1"), deps)
    [answer] = _finals(deps, "r1")
    assert isinstance(answer, LinkRejected)
    assert answer.data.failure.code is FailureCode.MAILBOX_UNLINKED
    assert _of(deps, MailboxReconnected) == []
    assert len(_of(deps, MailboxUnlinked)) == 1
    assert await handlers.list_mailboxes(ALICE, deps) == []
    assert store.verifications == {}


async def test_an_unlink_after_the_mailbox_took_the_reconnect_is_announced_after_it(
    deps: RegistryDeps, store: InMemoryRegistryStore
) -> None:
    await _flagged(deps)
    await handlers.when_link_requested_reserve(_request("r1"), deps)
    decisions = 0

    async def unlink_before_the_reconnects_end() -> None:
        nonlocal decisions
        decisions += 1
        if decisions == 3:  # committed, mailbox decided; the link's own end is next
            await handlers.unlink_mailbox(ADDRESS, deps, ALICE, UnlinkedBy.USER)
        else:
            store.cut_in("add_decision", unlink_before_the_reconnects_end)

    store.cut_in("add_decision", unlink_before_the_reconnects_end)
    await handlers.when_mailbox_verified_link(_verified("r1"), deps)
    kinds = [type(e) for e in _events(deps) if isinstance(e, MailboxReconnected | MailboxUnlinked)]
    # Whoever announces the unlink first finishes the reconnect it found committed.
    assert kinds == [MailboxReconnected, MailboxUnlinked]
    assert await handlers.list_mailboxes(ALICE, deps) == []
    assert store.verifications == {}


async def test_a_reconnect_a_crash_left_committed_is_finished_by_housekeeping(
    deps: RegistryDeps, store: InMemoryRegistryStore, clock: FakeClock
) -> None:
    linked = await _flagged(deps)
    await handlers.when_link_requested_reserve(_request("r1"), deps)
    decisions = 0

    async def crash_after_the_commit() -> None:
        nonlocal decisions
        decisions += 1
        if decisions == 2:
            raise ConnectionError("registry stopped")
        store.cut_in("add_decision", crash_after_the_commit)

    store.cut_in("add_decision", crash_after_the_commit)
    with pytest.raises(ConnectionError):
        await handlers.when_mailbox_verified_link(_verified("r1", NEW_IMAP), deps)
    assert (await _record(deps, "r1")).state is LinkState.RECONNECTING
    clock.advance(TTL * 2)  # committed: no longer expires
    await handlers.finish_pending(deps, GRACE)
    [answer] = _finals(deps, "r1")
    assert isinstance(answer, MailboxReconnected)
    assert answer.data.mailbox_id == linked.data.mailbox_id
    assert (await _mailbox(deps)).imap == NEW_IMAP
    assert store.pending_entries == {}


async def test_redeliveries_repeat_nothing_and_keep_the_mailboxs_credentials(
    deps: RegistryDeps, store: InMemoryRegistryStore, clock: FakeClock
) -> None:
    await _flagged(deps)
    await handlers.when_link_requested_reserve(_request("r1"), deps)
    await handlers.when_mailbox_verified_link(_verified("r1"), deps)
    published = len(_events(deps))
    await handlers.when_link_requested_reserve(_request("r1"), deps)
    await handlers.when_mailbox_verified_link(_verified("r1"), deps)
    assert len(_events(deps)) == published
    assert set(store.verifications) == {"r1"}
    # Retention forgets the ended reconnect link but not the credentials its mailbox uses.
    clock.advance(timedelta(days=9))
    assert await handlers.forget_ended_links(deps, timedelta(days=8)) == 1
    assert set(store.verifications) == {"r1"}
    assert (await _mailbox(deps)).verified_by == "r1"
    assert await handlers.unlink_mailbox(ADDRESS, deps, ALICE, UnlinkedBy.USER) is (
        UnlinkResult.UNLINKED
    )
    assert store.verifications == {}


async def test_a_flag_for_tokens_a_reconnect_brought_flags_its_mailbox(deps: RegistryDeps) -> None:
    linked = await _flagged(deps)
    await handlers.when_link_requested_reserve(_request("r1"), deps)
    await handlers.when_mailbox_verified_link(_verified("r1"), deps)
    flag = _flag(linked)
    flag = flag.model_copy(update={"data": flag.data.model_copy(update={"link_id": "r1"})})
    await handlers.when_reconnect_required_flag_mailbox(flag, deps)
    assert (await _mailbox(deps)).reconnect_required is FailureCode.RECONNECT_REQUIRED


@pytest.mark.parametrize("seed", range(8))
async def test_reconnects_and_an_unlink_at_once_never_resurrect_the_mailbox(seed: int) -> None:
    clock = FakeClock()
    store = InMemoryRegistryStore(clock, hint_loss=0.3, interleave=True, seed=seed)
    deps = RegistryDeps(store, RecordingPublisher(), PLANS, reservation_ttl=TTL, clock=clock)
    linked = await _flagged(deps)
    links = [f"r{n}" for n in range(4)]

    async def reconnect(link_id: str) -> None:
        await handlers.when_link_requested_reserve(_request(link_id, reconnect=True), deps)
        await handlers.when_mailbox_verified_link(_verified(link_id), deps)

    async def unlink() -> None:
        await asyncio.sleep(0)
        await handlers.unlink_mailbox(ADDRESS, deps, ALICE, UnlinkedBy.USER)

    await asyncio.gather(*(reconnect(link_id) for link_id in links), unlink())
    await handlers.finish_pending(deps, timedelta(0))
    for link_id in links:  # every link got exactly one answer
        assert len({e.event_id for e in _finals(deps, link_id)}) == 1, link_id
    events = _events(deps)
    unlinks = [n for n, e in enumerate(events) if isinstance(e, MailboxUnlinked)]
    assert len({events[n].event_id for n in unlinks}) == 1  # one unlink (hints lost: repeated)
    unlinked = unlinks[0]
    reconnected = [n for n, e in enumerate(events) if isinstance(e, MailboxReconnected)]
    # Each reconnect's first announcement comes before the unlink's.
    firsts = {events[n].event_id: n for n in reversed(reconnected)}
    assert all(n < unlinked for n in firsts.values())
    # A reconnect requested once the mailbox was unlinked is an ordinary link of a new mailbox.
    listed = await handlers.list_mailboxes(ALICE, deps)
    assert all(r.mailbox and r.mailbox.mailbox_id != linked.data.mailbox_id for r in listed)
    assert set(store.verifications) == {r.link_id for r in listed}
