"""What the registry does with each event and request, on in-memory storage and a set clock."""

from datetime import timedelta
from typing import TypeVar

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr, ValidationError

from mailbox_link_contract.events import (
    Authority,
    Envelope,
    Failure,
    LinkRejected,
    LinkRequested,
    LinkReserved,
    MailboxLinked,
    MailboxOwner,
    MailboxReconnectRequired,
    MailboxReconnectRequiredData,
    MailboxUnlinked,
    MailboxVerified,
    ProviderType,
    UnlinkedBy,
    UserPlanChanged,
    UserPlanChangedData,
    VerificationFailed,
)
from mailbox_link_contract.failures import FailureCode
from mailbox_link_shared.addresses import mailbox_key
from mailbox_link_shared.http import CallerKeys
from mailbox_link_shared.publishing import RecordingPublisher
from mailbox_link_shared.routing import EventRouter
from mailbox_link_shared.scopes import Scope, caller_keys
from registry import handlers
from registry.adapters.registry_store import PendingEntry
from registry.decisions import current_link, held_slots, load
from registry.domain.links import LinkRecord, LinkState
from registry.domain.plans import DEFAULT_PLANS, PlanTable
from registry.entrypoints.http import build_router
from registry.handlers import RegistryDeps, UnlinkResult
from registry_fakes import (
    FailingOncePublisher,
    FakeClock,
    InMemoryRegistryStore,
)
from registry_fakes import (
    failed_event as _failed,
)
from registry_fakes import (
    plan_changed_event as _plan_changed,
)
from registry_fakes import (
    request_data as _request_data,
)
from registry_fakes import (
    requested_event as _requested,
)
from registry_fakes import (
    verified_event as _verified,
)

ALICE = MailboxOwner(account_id="acme", user_id="alice")
BOB = MailboxOwner(account_id="globex", user_id="bob")
ADDRESS = "box@example.org"
TTL = timedelta(minutes=15)
PLANS = PlanTable(DEFAULT_PLANS, "basic")
GRACE = timedelta(seconds=5)

RegistryEvent = LinkRequested | MailboxVerified | VerificationFailed | UserPlanChanged
FinalEvent = MailboxLinked | LinkRejected
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


# --- a link's life ----------------------------------------------------------------------------


async def test_request_reserves_a_slot_not_the_address_and_announces_it(
    deps: RegistryDeps, clock: FakeClock
) -> None:
    await handlers.when_link_requested_reserve(_requested(ALICE, "l1"), deps)
    [reserved] = _events(deps)
    assert isinstance(reserved, LinkReserved)
    assert reserved.correlation_id == reserved.data.link_id == "l1"
    assert reserved.data.owner == ALICE
    assert reserved.data.address == ADDRESS
    assert reserved.data.expires_at == clock() + TTL
    assert await _holder(deps, ADDRESS) is None  # nothing held before control is proven
    assert (await handlers.get_plan(ALICE, deps)).used == 1


async def test_verified_mailbox_with_a_reservation_is_linked_and_listed(deps: RegistryDeps) -> None:
    await handlers.when_link_requested_reserve(_requested(ALICE, "l1"), deps)
    await handlers.when_mailbox_verified_link(_verified(ALICE, "l1"), deps)
    linked = _final(deps, "l1")
    assert isinstance(linked, MailboxLinked)
    assert linked.data.owner == ALICE
    assert linked.data.address == ADDRESS
    [mailbox] = await handlers.list_mailboxes(ALICE, deps)
    assert mailbox.address == ADDRESS
    assert mailbox.mailbox is not None
    assert mailbox.mailbox.mailbox_id == linked.data.mailbox_id
    assert mailbox.mailbox.imap.host == "imap.example.org"
    assert await handlers.list_mailboxes(BOB, deps) == []


async def test_another_spelling_of_a_linked_gmail_mailbox_is_linked_elsewhere(
    deps: RegistryDeps,
) -> None:
    await _link(deps, ALICE, "l1", "bob.smith@gmail.com")
    await handlers.when_link_requested_reserve(
        _requested(BOB, "l2", "bobsmith+crm@googlemail.com"), deps
    )
    await handlers.when_mailbox_verified_link(
        _verified(BOB, "l2", "bobsmith+crm@googlemail.com"), deps
    )
    refused = _final(deps, "l2")
    assert isinstance(refused, LinkRejected)
    assert refused.data.failure.code is FailureCode.ALREADY_LINKED_ELSEWHERE
    owner = await handlers.find_owner("b.o.b.smith@gmail.com", deps)
    assert owner is not None
    assert owner.owner == ALICE


async def test_a_mailbox_is_found_by_its_id_only_in_its_own_account_while_linked(
    deps: RegistryDeps,
) -> None:
    linked = await _link(deps, ALICE, "l1")
    mailbox_id = linked.data.mailbox_id
    found = await handlers.find_mailbox("acme", mailbox_id, deps)
    assert found is not None
    assert found.link_id == "l1"
    # Another account's key, and an id that never existed, learn the same: nothing.
    assert await handlers.find_mailbox("globex", mailbox_id, deps) is None
    assert await handlers.find_mailbox("acme", "0" * 32, deps) is None
    await handlers.unlink_mailbox(ADDRESS, deps, ALICE, UnlinkedBy.USER)
    assert await handlers.find_mailbox("acme", mailbox_id, deps) is None


async def test_reconnect_required_flags_a_linked_mailbox_which_stays_its_owners(
    deps: RegistryDeps,
) -> None:
    await handlers.when_link_requested_reserve(_requested(ALICE, "l1"), deps)
    await handlers.when_mailbox_verified_link(_verified(ALICE, "l1"), deps)
    linked = _final(deps, "l1")
    assert isinstance(linked, MailboxLinked)
    reconnect = MailboxReconnectRequired(
        correlation_id="l1",
        producer="oauth-broker",
        data=MailboxReconnectRequiredData(
            mailbox_id=linked.data.mailbox_id,
            link_id="l1",
            owner=ALICE,
            address=ADDRESS,
            provider=ProviderType.GOOGLE,
            failure=Failure.of(FailureCode.RECONNECT_REQUIRED, "invalid_grant"),
        ),
    )
    await _deliver(reconnect, deps)
    [mailbox] = await handlers.list_mailboxes(ALICE, deps)
    assert mailbox.mailbox is not None
    assert mailbox.mailbox.reconnect_required is FailureCode.RECONNECT_REQUIRED
    assert (await handlers.find_owner(ADDRESS, deps)) is not None


async def test_verification_before_the_request_waits_for_it_then_links(
    deps: RegistryDeps, store: InMemoryRegistryStore
) -> None:
    # Only the request claims: a verification never races its own request for a plan slot.
    await handlers.when_mailbox_verified_link(_verified(ALICE, "l1"), deps)
    assert _types(deps) == []
    assert store.claimants == []
    await handlers.when_link_requested_reserve(_requested(ALICE, "l1"), deps)
    assert _types(deps) == [LinkReserved, MailboxLinked]
    await handlers.when_mailbox_verified_link(_verified(ALICE, "l1"), deps)  # redelivered
    await handlers.when_link_requested_reserve(_requested(ALICE, "l1"), deps)
    assert _types(deps) == [LinkReserved, MailboxLinked]
    assert len(await handlers.list_mailboxes(ALICE, deps)) == 1
    assert (await handlers.get_plan(ALICE, deps)).used == 1


async def test_each_decision_is_published_once_when_nothing_fails(
    deps: RegistryDeps, store: InMemoryRegistryStore
) -> None:
    await handlers.when_mailbox_verified_link(_verified(ALICE, "l1"), deps)
    await handlers.when_link_requested_reserve(_requested(ALICE, "l1"), deps)
    assert _types(deps) == [LinkReserved, MailboxLinked]
    await handlers.when_link_requested_reserve(_requested(ALICE, "l1"), deps)
    await handlers.unlink_mailbox(ADDRESS, deps, ALICE, UnlinkedBy.USER)
    assert _types(deps) == [LinkReserved, MailboxLinked, MailboxUnlinked]
    assert _at_rest(store)  # every decision finished


async def test_second_account_cannot_link_a_linked_mailbox(deps: RegistryDeps) -> None:
    await _link(deps, ALICE, "l1")
    await handlers.when_link_requested_reserve(_requested(BOB, "l2"), deps)
    # Reserved like any request: the answer about the address waits for his verification.
    assert isinstance(_event(deps, "l2", LinkReserved), LinkReserved)
    await handlers.when_mailbox_verified_link(_verified(BOB, "l2"), deps)
    refused = _rejection(deps, "l2")
    assert refused.data.failure.code is FailureCode.ALREADY_LINKED_ELSEWHERE
    assert refused.data.owner == BOB
    body = refused.model_dump_json()
    assert "acme" not in body  # the other account and user stay secret
    assert "alice" not in body
    await handlers.when_mailbox_verified_link(_verified(BOB, "l2"), deps)  # redelivered
    assert _final(deps, "l2") == refused
    assert await _holder(deps, ADDRESS) == "l1"
    assert (await handlers.get_plan(BOB, deps)).used == 0
    assert await handlers.list_mailboxes(BOB, deps) == []


async def test_refusal_to_another_account_names_none_of_its_mailboxes(deps: RegistryDeps) -> None:
    await _link(deps, ALICE, "l1")
    await handlers.when_link_requested_reserve(_requested(BOB, "l2"), deps)
    await handlers.when_mailbox_verified_link(_verified(BOB, "l2"), deps)
    await handlers.when_mailbox_verified_link(_verified(BOB, "l3"), deps)  # verified first
    await handlers.when_link_requested_reserve(_requested(BOB, "l3"), deps)
    await handlers.when_link_requested_reserve(_requested(ALICE, "l4"), deps)
    assert _rejection(deps, "l2").data.mailbox_id is None
    assert _rejection(deps, "l3").data.mailbox_id is None
    assert _rejection(deps, "l4").data.mailbox_id is not None  # the owner may know their own


async def test_a_refused_request_holds_nothing_and_claims_only_its_address(
    deps: RegistryDeps, store: InMemoryRegistryStore
) -> None:
    await handlers.assign_plan(ALICE, "free", deps)
    await _link(deps, ALICE, "l1")
    store.claimants.clear()
    await handlers.when_link_requested_reserve(_requested(BOB, "elsewhere"), deps)
    await handlers.when_mailbox_verified_link(_verified(BOB, "elsewhere"), deps)
    await handlers.when_link_requested_reserve(_requested(ALICE, "again"), deps)
    await handlers.when_link_requested_reserve(_requested(ALICE, "full", "b@example.org"), deps)
    await handlers.when_mailbox_verified_link(_verified(ALICE, "late", "c@example.org"), deps)
    await handlers.when_link_requested_reserve(_requested(ALICE, "late", "c@example.org"), deps)
    codes = {
        link_id: _rejection(deps, link_id).data.failure.code
        for link_id in ("elsewhere", "again", "full", "late")
    }
    assert codes == {
        "elsewhere": FailureCode.ALREADY_LINKED_ELSEWHERE,
        "again": FailureCode.ALREADY_LINKED,
        "full": FailureCode.PLAN_LIMIT_REACHED,
        "late": FailureCode.PLAN_LIMIT_REACHED,
    }
    # Another account's request claims its own hold and a slot, and only once verified tries
    # the address; the user's own linked mailbox is answered on sight from their own hold.
    assert store.claimants == ["elsewhere", "elsewhere", "full", "late"]
    assert await _holder(deps, ADDRESS) == "l1"
    assert await _holder(deps, "b@example.org") is None  # the refusal ended its claim
    assert await _held(deps, ALICE) == {"l1"}
    assert await _held(deps, BOB) == set()
    for link_id in codes:
        record = await _record(deps, link_id)
        assert record.state is LinkState.REJECTED
        assert record.latest is not None
        assert record.latest.event_id == str(_rejection(deps, link_id).event_id)
    assert "late" not in store.verifications  # the refused link's credentials are gone
    assert _at_rest(store)


async def test_a_plan_full_of_expired_reservations_is_not_refused_on_sight(
    deps: RegistryDeps, clock: FakeClock
) -> None:
    await handlers.assign_plan(ALICE, "free", deps)
    await handlers.when_link_requested_reserve(_requested(ALICE, "l1", "a@example.org"), deps)
    clock.advance(TTL)  # expired, not yet swept
    await handlers.when_link_requested_reserve(_requested(ALICE, "l2", "b@example.org"), deps)
    assert _rejection(deps, "l1").data.failure.code is FailureCode.RESERVATION_EXPIRED
    assert isinstance(_event(deps, "l2", LinkReserved), LinkReserved)
    assert await _held(deps, ALICE) == {"l2"}


async def test_two_accounts_requesting_one_address_are_both_reserved_first_verified_wins(
    deps: RegistryDeps,
) -> None:
    await handlers.when_link_requested_reserve(_requested(ALICE, "l1"), deps)
    await handlers.when_link_requested_reserve(_requested(BOB, "l2"), deps)
    assert isinstance(_event(deps, "l1", LinkReserved), LinkReserved)
    assert isinstance(_event(deps, "l2", LinkReserved), LinkReserved)
    assert await _holder(deps, ADDRESS) is None
    await handlers.when_mailbox_verified_link(_verified(BOB, "l2"), deps)
    assert isinstance(_final(deps, "l2"), MailboxLinked)
    await handlers.when_mailbox_verified_link(_verified(ALICE, "l1"), deps)
    refused = _rejection(deps, "l1")
    assert refused.data.failure.code is FailureCode.ALREADY_LINKED_ELSEWHERE
    assert refused.data.mailbox_id is None
    assert await _holder(deps, ADDRESS) == "l2"
    assert (await handlers.get_plan(ALICE, deps)).used == 0


async def test_a_failed_verification_beside_a_linked_address_keeps_its_own_failure(
    deps: RegistryDeps,
) -> None:
    await handlers.when_link_requested_reserve(_requested(BOB, "l2"), deps)
    await _link(deps, ALICE, "l1")
    failed = _failed(BOB, "l2")
    await handlers.when_verification_failed_release(failed, deps)
    assert _rejection(deps, "l2").data.failure == failed.data.failure
    assert await _holder(deps, ADDRESS) == "l1"


async def test_a_verified_request_takes_the_address_of_an_expired_verified_holder(
    deps: RegistryDeps, store: InMemoryRegistryStore, clock: FakeClock
) -> None:
    await handlers.when_link_requested_reserve(_requested(ALICE, "l1"), deps)
    await handlers.when_link_requested_reserve(_requested(BOB, "l2"), deps)
    # l1's verification claims the address, then l1 stops before deciding LINKED.
    store.cut_in("add_decision", _crash)
    with pytest.raises(ConnectionError):
        await handlers.when_mailbox_verified_link(_verified(ALICE, "l1"), deps)
    assert (await _holder(deps, ADDRESS)) == "l1"  # a verified claim counts at once
    clock.advance(TTL)
    await handlers.when_link_requested_reserve(_requested(BOB, "l3", "x@example.org"), deps)
    await handlers.when_mailbox_verified_link(_verified(BOB, "l2"), deps)
    assert _rejection(deps, "l2").data.failure.code is FailureCode.RESERVATION_EXPIRED
    await handlers.when_mailbox_verified_link(_verified(ALICE, "l1"), deps)  # redelivered
    assert _rejection(deps, "l1").data.failure.code is FailureCode.RESERVATION_EXPIRED
    assert await _holder(deps, ADDRESS) is None


async def _crash() -> None:
    raise ConnectionError("the registry stopped here")


async def test_linking_your_own_mailbox_again_answers_already_linked_with_its_id(
    deps: RegistryDeps,
) -> None:
    linked = await _link(deps, ALICE, "l1")
    await handlers.assign_plan(ALICE, "free", deps)  # at the limit: the address answers first
    await handlers.when_link_requested_reserve(_requested(ALICE, "l2"), deps)
    again = _rejection(deps, "l2")
    assert again.data.failure.code is FailureCode.ALREADY_LINKED
    assert again.data.mailbox_id == linked.data.mailbox_id
    assert await _holder(deps, ADDRESS) == "l1"
    assert (await handlers.get_plan(ALICE, deps)).used == 1


async def test_linking_your_own_mailbox_while_its_link_is_in_flight_answers_in_progress(
    deps: RegistryDeps,
) -> None:
    await handlers.when_link_requested_reserve(_requested(ALICE, "l1"), deps)
    await handlers.when_link_requested_reserve(_requested(ALICE, "l2"), deps)
    refused = _rejection(deps, "l2")
    assert refused.data.failure.code is FailureCode.LINK_IN_PROGRESS
    assert refused.data.mailbox_id is None
    assert await _holder(deps, ADDRESS) is None
    assert (await handlers.get_plan(ALICE, deps)).used == 1
    await handlers.when_mailbox_verified_link(_verified(ALICE, "l1"), deps)
    assert isinstance(_final(deps, "l1"), MailboxLinked)


# --- plans ------------------------------------------------------------------------------------


async def test_plan_limit_counts_links_still_in_flight(deps: RegistryDeps) -> None:
    await handlers.assign_plan(ALICE, "free", deps)
    await handlers.when_link_requested_reserve(_requested(ALICE, "l1", "a@example.org"), deps)
    await handlers.when_link_requested_reserve(_requested(ALICE, "l2", "b@example.org"), deps)
    refused = _rejection(deps, "l2")
    assert refused.data.failure.code is FailureCode.PLAN_LIMIT_REACHED
    assert refused.data.plan_limit == 1
    assert await _holder(deps, "b@example.org") is None  # given back
    # Once the first ends without a link, its slot is free again.
    await handlers.when_verification_failed_release(_failed(ALICE, "l1", "a@example.org"), deps)
    await handlers.when_link_requested_reserve(_requested(ALICE, "l3", "b@example.org"), deps)
    assert isinstance(_event(deps, "l3", LinkReserved), LinkReserved)


async def test_downgrade_keeps_existing_links_and_blocks_new_ones_until_under_the_limit(
    deps: RegistryDeps, clock: FakeClock
) -> None:
    await handlers.when_user_plan_changed_apply(_plan_changed(ALICE, "professional", clock), deps)
    for n in range(4):
        await _link(deps, ALICE, f"l{n}", f"m{n}@example.org")
    clock.advance(timedelta(minutes=1))
    await handlers.when_user_plan_changed_apply(_plan_changed(ALICE, "basic", clock), deps)
    assert len(await handlers.list_mailboxes(ALICE, deps)) == 4
    usage = await handlers.get_plan(ALICE, deps)
    assert (usage.plan, usage.limit, usage.used) == ("basic", 3, 4)

    await handlers.when_link_requested_reserve(_requested(ALICE, "new1", "x@example.org"), deps)
    refused = _rejection(deps, "new1")
    assert refused.data.failure.code is FailureCode.PLAN_LIMIT_REACHED
    assert refused.data.plan_limit == 3

    unlinked = await handlers.unlink_mailbox("m0@example.org", deps, ALICE, UnlinkedBy.USER)
    assert unlinked is UnlinkResult.UNLINKED
    await handlers.when_link_requested_reserve(_requested(ALICE, "new2", "x@example.org"), deps)
    assert _rejection(deps, "new2").data.failure.code is FailureCode.PLAN_LIMIT_REACHED

    await handlers.unlink_mailbox("m1@example.org", deps, ALICE, UnlinkedBy.USER)
    await handlers.when_link_requested_reserve(_requested(ALICE, "new3", "x@example.org"), deps)
    assert isinstance(_event(deps, "new3", LinkReserved), LinkReserved)
    assert (await handlers.get_plan(ALICE, deps)).used == 3


async def test_an_older_plan_change_never_overrides_a_newer_one(
    deps: RegistryDeps, clock: FakeClock
) -> None:
    newer = _plan_changed(ALICE, "free", clock)
    clock.advance(timedelta(minutes=-5))
    older = _plan_changed(ALICE, "organization", clock)
    await handlers.when_user_plan_changed_apply(newer, deps)
    await handlers.when_user_plan_changed_apply(older, deps)
    assert (await handlers.get_plan(ALICE, deps)).plan == "free"
    same_time = UserPlanChanged(
        correlation_id="billing",
        producer="billing",
        data=UserPlanChangedData(owner=ALICE, plan="basic", changed_at=newer.data.changed_at),
    )
    await handlers.when_user_plan_changed_apply(same_time, deps)
    assert (await handlers.get_plan(ALICE, deps)).plan == "free"
    clock.advance(timedelta(minutes=10))
    await handlers.when_user_plan_changed_apply(_plan_changed(ALICE, "professional", clock), deps)
    usage = await handlers.get_plan(ALICE, deps)
    assert (usage.plan, usage.limit) == ("professional", 5)


async def test_a_user_never_assigned_a_plan_gets_the_default(deps: RegistryDeps) -> None:
    usage = await handlers.get_plan(ALICE, deps)
    assert (usage.plan, usage.limit, usage.used) == ("basic", 3, 0)
    await handlers.when_user_plan_changed_apply(_plan_changed(BOB, "gold", FakeClock()), deps)
    assert (await handlers.get_plan(BOB, deps)).plan == "basic"  # unknown plans fall back


# --- ends without a link ----------------------------------------------------------------------


async def test_failed_verification_gives_back_address_and_slot_with_the_verifiers_reason(
    deps: RegistryDeps,
) -> None:
    await handlers.when_link_requested_reserve(_requested(ALICE, "l1"), deps)
    failed = _failed(ALICE, "l1")
    await handlers.when_verification_failed_release(failed, deps)
    rejected = _rejection(deps, "l1")
    assert rejected.data.failure == failed.data.failure
    assert await _holder(deps, ADDRESS) is None
    assert (await handlers.get_plan(ALICE, deps)).used == 0
    await handlers.when_link_requested_reserve(_requested(BOB, "l2"), deps)
    assert isinstance(_event(deps, "l2", LinkReserved), LinkReserved)


async def test_failed_verification_before_the_request_ends_the_link_with_the_verifiers_reason(
    deps: RegistryDeps, store: InMemoryRegistryStore
) -> None:
    failed = _failed(ALICE, "l1")
    await handlers.when_verification_failed_release(failed, deps)
    await handlers.when_link_requested_reserve(_requested(ALICE, "l1"), deps)
    await handlers.when_mailbox_verified_link(_verified(ALICE, "l1"), deps)  # a confused verifier
    [rejected] = _events(deps)
    assert isinstance(rejected, LinkRejected)
    assert rejected.data.failure == failed.data.failure
    assert (rejected.data.plan_limit, rejected.data.mailbox_id) == (None, None)
    assert store.claimants == []
    assert await _holder(deps, ADDRESS) is None
    assert (await handlers.get_plan(ALICE, deps)).used == 0
    assert _at_rest(store)


async def test_failed_verification_before_the_request_wins_over_a_refusal_on_sight(
    deps: RegistryDeps,
) -> None:
    await _link(deps, ALICE, "l1")
    failed = _failed(BOB, "l2")
    await handlers.when_verification_failed_release(failed, deps)
    await handlers.when_link_requested_reserve(_requested(BOB, "l2"), deps)
    assert _rejection(deps, "l2").data.failure == failed.data.failure
    assert await _holder(deps, ADDRESS) == "l1"


async def test_overdue_reservation_expires_and_frees_address_and_slot(
    deps: RegistryDeps, clock: FakeClock
) -> None:
    await handlers.when_link_requested_reserve(_requested(ALICE, "l1"), deps)
    clock.advance(TTL - timedelta(seconds=1))
    assert (await handlers.finish_pending(deps, GRACE)).expired == 0
    clock.advance(timedelta(seconds=1))
    assert (await handlers.finish_pending(deps, GRACE)).expired == 1
    assert _rejection(deps, "l1").data.failure.code is FailureCode.RESERVATION_EXPIRED
    assert await _holder(deps, ADDRESS) is None
    assert (await handlers.get_plan(ALICE, deps)).used == 0
    # A verification that comes after the expiry links nothing.
    await handlers.when_mailbox_verified_link(_verified(ALICE, "l1"), deps)
    assert isinstance(_final(deps, "l1"), LinkRejected)
    assert await handlers.find_owner(ADDRESS, deps) is None
    assert (await handlers.finish_pending(deps, GRACE)).expired == 0


async def test_a_verification_after_the_expiry_expires_the_reservation_before_any_sweep(
    deps: RegistryDeps, clock: FakeClock
) -> None:
    await handlers.when_link_requested_reserve(_requested(ALICE, "l1"), deps)
    clock.advance(TTL)
    await handlers.when_mailbox_verified_link(_verified(ALICE, "l1"), deps)
    assert _types(deps) == [LinkReserved, LinkRejected]
    assert _rejection(deps, "l1").data.failure.code is FailureCode.RESERVATION_EXPIRED
    assert await handlers.find_owner(ADDRESS, deps) is None
    assert await _holder(deps, ADDRESS) is None
    assert (await handlers.get_plan(ALICE, deps)).used == 0
    assert (await handlers.finish_pending(deps, GRACE)).expired == 0


async def test_an_expired_holder_is_taken_over_by_the_next_request(
    deps: RegistryDeps, clock: FakeClock
) -> None:
    await handlers.when_link_requested_reserve(_requested(ALICE, "l1"), deps)
    clock.advance(TTL)
    await handlers.when_link_requested_reserve(_requested(ALICE, "l2"), deps)
    assert _rejection(deps, "l1").data.failure.code is FailureCode.RESERVATION_EXPIRED
    reserved = _event(deps, "l2", LinkReserved)
    assert reserved.data.expires_at == clock() + TTL
    assert await _held(deps, ALICE) == {"l2"}
    assert (await handlers.get_plan(ALICE, deps)).used == 1
    assert (await handlers.finish_pending(deps, GRACE)).expired == 0
    await handlers.when_mailbox_verified_link(_verified(ALICE, "l1"), deps)
    await handlers.when_mailbox_verified_link(_verified(ALICE, "l2"), deps)
    assert isinstance(_final(deps, "l1"), LinkRejected)
    assert isinstance(_final(deps, "l2"), MailboxLinked)


# --- redelivery and interrupted decisions -----------------------------------------------------


async def _deliver(event: Envelope, deps: RegistryDeps) -> None:
    await EventRouter(handlers.EVENT_HANDLERS, deps).handle(event)


def _a_busy_day(clock: FakeClock) -> list[RegistryEvent]:
    # Every kind of answer: linked, refused elsewhere, already linked, in progress, plan limit,
    # failed verification, verification before request.
    return [
        _plan_changed(ALICE, "basic", clock),
        _requested(ALICE, "linked"),
        _verified(ALICE, "linked"),
        _requested(BOB, "elsewhere"),
        _verified(BOB, "elsewhere"),
        _requested(ALICE, "again"),
        _requested(ALICE, "flight", "f@example.org"),
        _requested(ALICE, "in-progress", "f@example.org"),
        _verified(ALICE, "early", "e@example.org"),
        _requested(ALICE, "early", "e@example.org"),
        _requested(ALICE, "over-limit", "o@example.org"),
        _failed(ALICE, "flight", "f@example.org"),
        _failed(BOB, "failed-first", "g@example.org"),
        _requested(BOB, "failed-first", "g@example.org"),
    ]


async def test_redelivered_events_publish_nothing_new(
    deps: RegistryDeps, store: InMemoryRegistryStore, clock: FakeClock
) -> None:
    day = _a_busy_day(clock)
    for event in day:
        await _deliver(event, deps)
        await _deliver(event, deps)  # redelivered at once
    first_time = list(_events(deps))
    for event in reversed(day):
        await _deliver(event, deps)  # and again, much later
    assert _events(deps) == first_time
    assert len({e.event_id for e in first_time}) == len(first_time)  # none published twice
    assert _at_rest(store)
    for link_id in {e.correlation_id for e in first_time}:
        answers = [e for e in first_time if e.correlation_id == link_id]
        assert len([e for e in answers if isinstance(e, FinalEvent)]) == 1, link_id
        assert len([e for e in answers if isinstance(e, LinkReserved)]) <= 1, link_id
    codes = {
        e.correlation_id: e.data.failure.code for e in first_time if isinstance(e, LinkRejected)
    }
    assert codes == {
        "elsewhere": FailureCode.ALREADY_LINKED_ELSEWHERE,
        "again": FailureCode.ALREADY_LINKED,
        "in-progress": FailureCode.LINK_IN_PROGRESS,
        "over-limit": FailureCode.PLAN_LIMIT_REACHED,
        "flight": FailureCode.IMAP_AUTH_FAILED,
        "failed-first": FailureCode.IMAP_AUTH_FAILED,
    }


async def test_an_interrupted_decision_stays_open_and_the_relay_publishes_it_once(
    store: InMemoryRegistryStore, clock: FakeClock
) -> None:
    deps = _deps_failing_once(store, clock, "MailboxLinked")
    await handlers.when_link_requested_reserve(_requested(ALICE, "l1"), deps)
    verified = _verified(ALICE, "l1")
    with pytest.raises(ConnectionError):
        await handlers.when_mailbox_verified_link(verified, deps)
    assert _types(deps) == [LinkReserved]
    record = await _record(deps, "l1")
    assert record.state is LinkState.LINKED
    assert record.latest is not None
    assert record.latest.event_id is not None
    assert list(store.pending_entries) == ["l1/1"]

    # A decision younger than the grace is left to the request that is finishing it.
    clock.advance(GRACE)
    assert (await handlers.finish_pending(deps, GRACE)).finished == 0
    clock.advance(timedelta(milliseconds=1))
    assert (await handlers.finish_pending(deps, GRACE)).finished == 1
    assert _types(deps) == [LinkReserved, MailboxLinked]
    linked = _final(deps, "l1")
    assert str(linked.event_id) == record.latest.event_id
    assert _at_rest(store)
    # The consumer saw the error, so the verification comes again: nothing new.
    await handlers.when_mailbox_verified_link(verified, deps)
    assert (await handlers.finish_pending(deps, GRACE)).finished == 0
    assert _types(deps) == [LinkReserved, MailboxLinked]
    owner = await handlers.find_owner(ADDRESS, deps)
    assert owner is not None
    assert owner.mailbox is not None
    assert owner.mailbox.mailbox_id == linked.data.mailbox_id


async def test_an_unannounced_rejection_is_announced_by_the_next_look_before_it_frees_anything(
    store: InMemoryRegistryStore, clock: FakeClock
) -> None:
    deps = _deps_failing_once(store, clock, "LinkRejected")
    await handlers.when_link_requested_reserve(_requested(ALICE, "l1"), deps)
    failed = _failed(ALICE, "l1")
    with pytest.raises(ConnectionError):
        await handlers.when_verification_failed_release(failed, deps)
    assert _types(deps) == [LinkReserved]
    # Whoever looks at the slot finds the rejection unannounced, announces it, and only
    # then sees the slot free: the next link's events come after it on the topic.
    assert await _held(deps, ALICE) == set()
    assert _rejection(deps, "l1").data.failure == failed.data.failure
    assert (await handlers.get_plan(ALICE, deps)).used == 0
    assert _at_rest(store)
    await handlers.when_verification_failed_release(failed, deps)  # redelivered
    clock.advance(GRACE * 2)
    assert (await handlers.finish_pending(deps, GRACE)).finished == 0
    assert _types(deps) == [LinkReserved, LinkRejected]


async def test_the_relay_announces_an_interrupted_rejection_then_gives_back_what_it_held(
    store: InMemoryRegistryStore, clock: FakeClock
) -> None:
    deps = _deps_failing_once(store, clock, "LinkRejected")
    await handlers.when_link_requested_reserve(_requested(ALICE, "l1"), deps)
    with pytest.raises(ConnectionError):
        await handlers.when_verification_failed_release(_failed(ALICE, "l1"), deps)
    clock.advance(GRACE * 2)
    assert (await handlers.finish_pending(deps, GRACE)).finished == 1
    assert _rejection(deps, "l1").data.failure.code is FailureCode.IMAP_AUTH_FAILED
    assert await _holder(deps, ADDRESS) is None
    assert (await handlers.get_plan(ALICE, deps)).used == 0
    assert _at_rest(store)
    assert (await handlers.finish_pending(deps, GRACE)).finished == 0
    assert _types(deps) == [LinkReserved, LinkRejected]


async def test_an_interrupted_refusal_on_sight_is_announced_once(
    store: InMemoryRegistryStore, clock: FakeClock
) -> None:
    deps = _deps_failing_once(store, clock, "LinkRejected")
    await _link(deps, ALICE, "l1")
    requested = _requested(ALICE, "l2")
    with pytest.raises(ConnectionError):
        await handlers.when_link_requested_reserve(requested, deps)
    record = await _record(deps, "l2")
    assert record.state is LinkState.REJECTED
    assert record.latest is not None
    assert "l2/1" in store.pending_entries
    clock.advance(GRACE * 2)
    assert (await handlers.finish_pending(deps, GRACE)).finished == 1
    await handlers.when_link_requested_reserve(requested, deps)  # redelivered after the relay
    refused = _rejection(deps, "l2")
    assert str(refused.event_id) == record.latest.event_id
    assert refused.data.failure.code is FailureCode.ALREADY_LINKED
    assert _at_rest(store)
    assert await _holder(deps, ADDRESS) == "l1"


async def test_a_lost_decision_closes_its_marker_and_announces_nothing(
    deps: RegistryDeps, store: InMemoryRegistryStore
) -> None:
    await handlers.when_link_requested_reserve(_requested(ALICE, "l1"), deps)
    failed = _failed(ALICE, "l1")

    async def verification_fails_meanwhile() -> None:
        await handlers.when_verification_failed_release(failed, deps)

    # The verifier's failure is decided between the link's read and its conditional update.
    store.cut_in("add_decision", verification_fails_meanwhile)
    await handlers.when_mailbox_verified_link(_verified(ALICE, "l1"), deps)
    assert _types(deps) == [LinkReserved, LinkRejected]
    assert _rejection(deps, "l1").data.failure == failed.data.failure
    assert _at_rest(store)
    assert await handlers.find_owner(ADDRESS, deps) is None
    assert await _holder(deps, ADDRESS) is None
    assert (await handlers.get_plan(ALICE, deps)).used == 0


async def test_claims_made_by_a_request_after_its_link_ended_hold_nothing(
    deps: RegistryDeps, store: InMemoryRegistryStore
) -> None:
    failed = _failed(ALICE, "l1")

    async def verification_fails_meanwhile() -> None:
        await handlers.when_verification_failed_release(failed, deps)

    # The link ends after the request read it but before it claimed the address and a slot.
    store.cut_in("add_claim", verification_fails_meanwhile)
    await handlers.when_link_requested_reserve(_requested(ALICE, "l1"), deps)
    assert store.claimants == ["l1", "l1"]
    assert _types(deps) == [LinkRejected]
    assert _rejection(deps, "l1").data.failure == failed.data.failure
    assert await _holder(deps, ADDRESS) is None  # an ended link's claims count for nothing
    assert (await handlers.get_plan(ALICE, deps)).used == 0
    assert _at_rest(store)
    await handlers.when_link_requested_reserve(_requested(BOB, "l2"), deps)
    assert isinstance(_event(deps, "l2", LinkReserved), LinkReserved)


async def test_a_refusal_that_loses_the_records_creation_closes_its_marker(
    deps: RegistryDeps, store: InMemoryRegistryStore
) -> None:
    failed = _failed(ALICE, "l1")

    async def request_arrives_meanwhile() -> None:
        await handlers.when_link_requested_reserve(_requested(ALICE, "l1"), deps)

    # The request creates (and reserves) the record between the failure's read and its insert.
    store.cut_in("add_link", request_arrives_meanwhile)
    await handlers.when_verification_failed_release(failed, deps)
    assert _types(deps) == [LinkReserved, LinkRejected]
    assert _rejection(deps, "l1").data.failure == failed.data.failure
    assert _at_rest(store)
    assert await _holder(deps, ADDRESS) is None
    assert (await handlers.get_plan(ALICE, deps)).used == 0


async def test_a_crash_before_a_decision_leaves_the_link_to_its_redelivery_or_its_expiry(
    deps: RegistryDeps, store: InMemoryRegistryStore, clock: FakeClock
) -> None:
    async def crash() -> None:
        raise ConnectionError("storage away")

    requested = _requested(ALICE, "l1")
    store.cut_in("add_decision", crash)  # after the claims, before the decision
    with pytest.raises(ConnectionError):
        await handlers.when_link_requested_reserve(requested, deps)
    clock.advance(GRACE * 2)
    assert await handlers.finish_pending(deps, GRACE) == handlers.HousekeepingRound()
    assert _events(deps) == []  # nothing was decided, so nothing is announced
    assert (await _record(deps, "l1")).state is LinkState.RESERVING
    await handlers.when_link_requested_reserve(requested, deps)  # redelivered
    assert _types(deps) == [LinkReserved]
    assert await _held(deps, ALICE) == {"l1"}  # the slot claimed before the crash, once
    assert len(store.claims) == 2
    clock.advance(TTL)
    assert (await handlers.finish_pending(deps, GRACE)).expired == 1
    assert _types(deps) == [LinkReserved, LinkRejected]
    assert _at_rest(store)


async def test_the_relay_closes_an_entry_a_redelivery_reopened_and_announces_nothing_new(
    deps: RegistryDeps, store: InMemoryRegistryStore, clock: FakeClock
) -> None:
    await _link(deps, ALICE, "l1")
    await store.open_pending(PendingEntry("l1/1", "l1", clock()))
    clock.advance(GRACE * 2)
    assert (await handlers.finish_pending(deps, GRACE)).finished == 1
    assert _types(deps) == [LinkReserved, MailboxLinked]
    assert _at_rest(store)


async def test_a_stale_holder_with_an_unpublished_decision_is_announced_before_takeover(
    store: InMemoryRegistryStore, clock: FakeClock
) -> None:
    deps = _deps_failing_once(store, clock, "LinkRejected")
    await handlers.when_link_requested_reserve(_requested(ALICE, "l1"), deps)
    with pytest.raises(ConnectionError):
        await handlers.when_verification_failed_release(_failed(ALICE, "l1"), deps)
    # The same user's next request looks at their hold on the mailbox, so announces l1's end.
    await handlers.when_link_requested_reserve(_requested(ALICE, "l2"), deps)
    assert [(type(e), e.correlation_id) for e in _events(deps)] == [
        (LinkReserved, "l1"),
        (LinkRejected, "l1"),
        (LinkReserved, "l2"),
    ]
    assert list(store.pending_entries) == ["l2/1"]  # only the link in flight
    clock.advance(GRACE * 2)
    assert (await handlers.finish_pending(deps, GRACE)).finished == 0


def test_link_ids_that_could_name_a_document_field_never_reach_the_registry() -> None:
    # The store keys documents and slot fields (held.<link id>) by link id.
    for bad in ("a.b", "$where", "", "x" * 65, "a/b"):
        with pytest.raises(ValidationError, match="link_id"):
            _failed(ALICE, bad)
        with pytest.raises(ValidationError, match="link_id"):
            _request_data(ALICE, bad, ADDRESS)
    assert _failed(ALICE, "Ab-9_" + "x" * 59).data.link_id.startswith("Ab-9_")


# --- unlinking and lookups --------------------------------------------------------------------


async def test_unlinked_mailbox_is_announced_freed_and_linkable_by_another_account(
    deps: RegistryDeps, store: InMemoryRegistryStore
) -> None:
    linked = await _link(deps, ALICE, "l1")
    assert await handlers.unlink_mailbox(ADDRESS, deps, BOB, UnlinkedBy.USER) is (
        UnlinkResult.NOT_FOUND
    )
    assert await handlers.unlink_mailbox(ADDRESS, deps, ALICE, UnlinkedBy.USER) is (
        UnlinkResult.UNLINKED
    )
    unlinked = _events(deps)[-1]
    assert isinstance(unlinked, MailboxUnlinked)
    assert unlinked.data.mailbox_id == linked.data.mailbox_id
    assert unlinked.data.owner == ALICE
    assert unlinked.data.link_id == "l1"
    assert unlinked.data.unlinked_by is UnlinkedBy.USER
    assert (await _record(deps, "l1")).state is LinkState.UNLINKED
    assert "l1" not in store.verifications  # the sealed credentials go with the link
    assert await handlers.list_mailboxes(ALICE, deps) == []
    assert (await handlers.get_plan(ALICE, deps)).used == 0
    assert await handlers.find_owner(ADDRESS, deps) is None
    assert await handlers.unlink_mailbox(ADDRESS, deps, ALICE, UnlinkedBy.USER) is (
        UnlinkResult.NOT_FOUND
    )
    relinked = await _link(deps, BOB, "l2")
    assert relinked.data.owner == BOB
    assert relinked.data.mailbox_id != linked.data.mailbox_id


async def test_admin_unlinks_whoever_linked_the_mailbox(deps: RegistryDeps) -> None:
    assert await handlers.unlink_mailbox(ADDRESS, deps, None, UnlinkedBy.ADMIN) is (
        UnlinkResult.NOT_FOUND
    )
    await _link(deps, ALICE, "l1")
    assert await handlers.unlink_mailbox(ADDRESS, deps, None, UnlinkedBy.ADMIN) is (
        UnlinkResult.UNLINKED
    )
    unlinked = _events(deps)[-1]
    assert isinstance(unlinked, MailboxUnlinked)
    assert unlinked.data.owner == ALICE
    assert unlinked.data.unlinked_by is UnlinkedBy.ADMIN
    assert await _holder(deps, ADDRESS) is None


async def test_unlink_while_the_link_is_in_flight_answers_in_progress(
    deps: RegistryDeps, store: InMemoryRegistryStore, clock: FakeClock
) -> None:
    await handlers.when_link_requested_reserve(_requested(ALICE, "l1"), deps)
    # Unverified, it holds no address: there is nothing of anyone's to unlink.
    assert await handlers.unlink_mailbox(ADDRESS, deps, None, UnlinkedBy.ADMIN) is (
        UnlinkResult.NOT_FOUND
    )
    # Verified, it holds the address from just before it is linked.
    store.cut_in("add_decision", _crash)
    with pytest.raises(ConnectionError):
        await handlers.when_mailbox_verified_link(_verified(ALICE, "l1"), deps)
    assert await handlers.unlink_mailbox(ADDRESS, deps, ALICE, UnlinkedBy.USER) is (
        UnlinkResult.IN_PROGRESS
    )
    assert await handlers.unlink_mailbox(ADDRESS, deps, None, UnlinkedBy.ADMIN) is (
        UnlinkResult.IN_PROGRESS
    )
    assert await handlers.unlink_mailbox(ADDRESS, deps, BOB, UnlinkedBy.USER) is (
        UnlinkResult.NOT_FOUND
    )
    assert not [e for e in _events(deps) if isinstance(e, MailboxUnlinked)]
    clock.advance(TTL)  # expired, even before the sweep: there is nothing to unlink
    assert await handlers.unlink_mailbox(ADDRESS, deps, ALICE, UnlinkedBy.USER) is (
        UnlinkResult.NOT_FOUND
    )


async def test_owner_is_known_only_once_the_mailbox_is_linked(deps: RegistryDeps) -> None:
    assert await handlers.find_owner(ADDRESS, deps) is None
    await handlers.when_link_requested_reserve(_requested(ALICE, "l1"), deps)
    assert await handlers.find_owner(ADDRESS, deps) is None
    linked = await _link(deps, ALICE, "l1")
    owner = await handlers.find_owner(ADDRESS, deps)
    assert owner is not None
    assert owner.owner == ALICE
    assert owner.mailbox is not None
    assert owner.mailbox.mailbox_id == linked.data.mailbox_id


async def test_mailboxes_are_listed_oldest_first(deps: RegistryDeps, clock: FakeClock) -> None:
    await handlers.assign_plan(ALICE, "professional", deps)
    for n in range(3):
        await _link(deps, ALICE, f"l{n}", f"m{n}@example.org")
        clock.advance(timedelta(minutes=1))
    await handlers.when_link_requested_reserve(_requested(ALICE, "flight", "f@example.org"), deps)
    listed = await handlers.list_mailboxes(ALICE, deps)
    assert [r.link_id for r in listed] == ["l0", "l1", "l2"]  # not the one in flight
    assert (await handlers.get_plan(ALICE, deps)).used == 4


# --- helpers ----------------------------------------------------------------------------------


async def _link(
    deps: RegistryDeps, owner: MailboxOwner, link_id: str, address: str = ADDRESS
) -> MailboxLinked:
    await handlers.when_link_requested_reserve(_requested(owner, link_id, address), deps)
    await handlers.when_mailbox_verified_link(_verified(owner, link_id, address), deps)
    linked = _final(deps, link_id)
    assert isinstance(linked, MailboxLinked)
    return linked


def _events(deps: RegistryDeps) -> list[Envelope]:
    assert isinstance(deps.publisher, RecordingPublisher)
    return deps.publisher.events


def _types(deps: RegistryDeps) -> list[type[Envelope]]:
    return [type(e) for e in _events(deps)]


def _deps_failing_once(
    store: InMemoryRegistryStore, clock: FakeClock, event_type: str
) -> RegistryDeps:
    publisher = FailingOncePublisher(event_type)
    return RegistryDeps(store, publisher, PLANS, reservation_ttl=TTL, clock=clock)


def _event(deps: RegistryDeps, link_id: str, kind: type[E]) -> E:
    [event] = [e for e in _events(deps) if e.correlation_id == link_id and isinstance(e, kind)]
    return event


def _final(deps: RegistryDeps, link_id: str) -> FinalEvent:
    """The one answer the link got; fails if it got none or several."""
    [event] = [
        e for e in _events(deps) if e.correlation_id == link_id and isinstance(e, FinalEvent)
    ]
    assert isinstance(event, FinalEvent)
    return event


async def _holder(deps: RegistryDeps, address: str) -> str | None:
    """The link holding the address now, read from its claims."""
    holder = await current_link(mailbox_key(address), deps)
    return holder.link_id if holder else None


async def _held(deps: RegistryDeps, owner: MailboxOwner) -> set[str]:
    """The links holding the user's plan slots now, read from their claims."""
    return {r.link_id for r in await held_slots(owner, deps, 15)}


async def _record(deps: RegistryDeps, link_id: str) -> LinkRecord:
    stored = await deps.store.get_link(link_id)
    assert stored is not None
    return await load(stored, deps)


def _at_rest(store: InMemoryRegistryStore) -> bool:
    """No relay entry left: every link linked or ended, and announced."""
    return store.pending_entries == {}


def _rejection(deps: RegistryDeps, link_id: str) -> LinkRejected:
    event = _final(deps, link_id)
    assert isinstance(event, LinkRejected), event
    return event


# --- retention --------------------------------------------------------------------------------


async def test_links_ended_longer_ago_than_the_retention_are_forgotten_with_their_old_claims(
    deps: RegistryDeps, store: InMemoryRegistryStore, clock: FakeClock
) -> None:
    retention = timedelta(days=8)
    for link_id, owner in (("l1", ALICE), ("l2", BOB)):  # claims 0 and 1 of the address
        await _link(deps, owner, link_id)
        await handlers.unlink_mailbox(ADDRESS, deps, owner, UnlinkedBy.USER)
    await handlers.when_link_requested_reserve(_requested(BOB, "refused", "x@example.org"), deps)
    await handlers.when_verification_failed_release(_failed(BOB, "refused", "x@example.org"), deps)
    clock.advance(timedelta(days=1))
    await _link(deps, ALICE, "l3")  # claim 2
    assert await handlers.forget_ended_links(deps, retention) == 0
    clock.advance(retention)
    assert await handlers.forget_ended_links(deps, retention) == 3
    assert set(store.links) == {"l3"}
    assert {link_id for link_id, _ in store.decisions} == {"l3"}
    # Generation 1 went; generation 0 (where readers start) and the latest stay.
    address_claims = sorted(c for c in store.claims if c.startswith("mailbox:"))
    assert address_claims == [
        f"mailbox:{ADDRESS}#0",
        f"mailbox:{ADDRESS}#2",
    ]  # the refused link was never verified, so never claimed x@example.org
    assert await _holder(deps, ADDRESS) == "l3"
    assert await handlers.forget_ended_links(deps, retention) == 0
    await _link(deps, ALICE, "l4", "x@example.org")  # a forgotten holder's claim is free
    assert await _holder(deps, "x@example.org") == "l4"


async def test_an_operator_lowering_a_plans_limit_keeps_the_links_listed_and_counted(
    store: InMemoryRegistryStore, clock: FakeClock
) -> None:
    generous = RegistryDeps(
        store, RecordingPublisher(), PlanTable({"basic": 5}, "basic"), TTL, clock
    )
    for n in range(5):
        await _link(generous, ALICE, f"l{n}", f"m{n}@example.org")
    lowered = RegistryDeps(
        store, RecordingPublisher(), PlanTable({"basic": 3}, "basic"), TTL, clock
    )
    assert len(await handlers.list_mailboxes(ALICE, lowered)) == 5
    assert (await handlers.get_plan(ALICE, lowered)).used == 5
    await handlers.when_link_requested_reserve(_requested(ALICE, "l5", "m5@example.org"), lowered)
    assert _rejection(lowered, "l5").data.failure.code is FailureCode.PLAN_LIMIT_REACHED


async def test_the_mailbox_records_and_lists_the_authority_its_verification_named(
    deps: RegistryDeps,
) -> None:
    await handlers.when_link_requested_reserve(_requested(ALICE, "l1"), deps)
    verified = _verified(ALICE, "l1")
    data = verified.data.model_copy(update={"authority": Authority.PUBLISHED_SETTINGS})
    await handlers.when_mailbox_verified_link(verified.model_copy(update={"data": data}), deps)
    await _link(deps, ALICE, "l2", "older@example.org")  # no authority: linked before 1.3.0
    app = FastAPI()
    keys = CallerKeys(
        caller_keys({"link-api": SecretStr(TOKEN)}, {"link-api": [Scope.REGISTRY]}, {})
    )
    app.include_router(build_router(deps, keys))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://registry",
        headers={"Authorization": f"Bearer {TOKEN}"},
    ) as client:
        answer = await client.get("/v1/accounts/acme/users/alice/mailboxes")
    assert answer.status_code == 200
    authorities = {m["email"]: m["authority"] for m in answer.json()["mailboxes"]}
    assert authorities == {ADDRESS: "published_settings", "older@example.org": None}


TOKEN = "registry-token-registry-token"
