"""One function per thing the registry does: reserve, link, release, expire, unlink, answer.

Every step is safe to repeat and to run concurrently with any other: decisions are
conditional updates of the link's own record, and their effects are idempotent (DESIGN.md).
"""

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from mailbox_link_contract.events import (
    AuthorizationRequired,
    Envelope,
    Failure,
    LinkRejected,
    LinkRejectedData,
    LinkRequested,
    LinkReserved,
    LinkReservedData,
    MailboxLinked,
    MailboxLinkedData,
    MailboxOwner,
    MailboxReconnectRequired,
    MailboxUnlinked,
    MailboxUnlinkedData,
    MailboxVerified,
    UnlinkedBy,
    UserPlanChanged,
    VerificationFailed,
    utc_now,
)
from mailbox_link_contract.failures import FailureCode
from mailbox_link_contract.reading import read_document
from mailbox_link_contract.topics import event_type_of, spec_of
from mailbox_link_shared.addresses import mailbox_key
from mailbox_link_shared.publishing import EventPublisher
from mailbox_link_shared.routing import EventHandlers, ignore
from registry.adapters.registry_store import RegistryStore, UserSlots
from registry.config import SERVICE_NAME
from registry.domain.links import (
    HOLDING,
    IN_FLIGHT,
    HolderVerdict,
    LinkRecord,
    LinkState,
    MailboxDetails,
    is_stale,
    judge_address_holder,
)
from registry.domain.plans import PlanTable

logger = logging.getLogger(__name__)
# A decision announces one event of the mailboxes topic, kept in the record until published.
_OUTBOX_EVENTS = {event_type_of(model): model for model in spec_of("mailboxes").events}
# Each retry follows a change made by a competing request; a handful always suffices.
MAX_ATTEMPTS = 10
_REFUSALS = {
    HolderVerdict.ALREADY_LINKED: FailureCode.ALREADY_LINKED,
    HolderVerdict.LINK_IN_PROGRESS: FailureCode.LINK_IN_PROGRESS,
    HolderVerdict.ALREADY_LINKED_ELSEWHERE: FailureCode.ALREADY_LINKED_ELSEWHERE,
}


@dataclass(frozen=True)
class RegistryDeps:
    """What the handlers work with; wired in bootstrap."""

    store: RegistryStore
    publisher: EventPublisher
    plans: PlanTable
    reservation_ttl: timedelta = timedelta(minutes=15)
    clock: Callable[[], datetime] = utc_now


# --- events in --------------------------------------------------------------------------------


async def when_link_requested_reserve(event: LinkRequested, deps: RegistryDeps) -> None:
    """Reserves the address and a plan slot for a new link request, or rejects it."""
    await _reserve(*await _start(event, deps), deps)


async def when_mailbox_verified_link(event: MailboxVerified, deps: RegistryDeps) -> None:
    """Links a verified mailbox if its reservation stands (reserving first if it came late)."""
    record = await _reserve(*await _start(event, deps), deps)
    if record.has_expired(deps.clock()):
        record = await _expire(record, deps)  # too late: the slot may be promised elsewhere
    if record.state is LinkState.RESERVED:
        mailbox = MailboxDetails(
            mailbox_id=uuid.uuid4().hex,
            imap=event.data.imap,
            smtp=event.data.smtp,
            credentials=event.data.verified_credentials,
            linked_at=deps.clock(),
            auth=event.data.auth,
        )
        linked = _linked(record, mailbox)
        record = await _decide(
            record, {LinkState.RESERVED}, LinkState.LINKED, linked, deps, mailbox
        )
    logger.info(
        "link %s of %s after verification: %s", record.link_id, record.address, record.state
    )


async def when_verification_failed_release(event: VerificationFailed, deps: RegistryDeps) -> None:
    """Ends the link with the verifier's reason and gives back what it held."""
    rejected = _rejected(_new_record(event, deps), event.data.failure)
    record, _ = await _start(event, deps, refusal=rejected)
    if record.state in IN_FLIGHT:
        rejected = _rejected(record, event.data.failure)
        await _decide(record, IN_FLIGHT, LinkState.REJECTED, rejected, deps)
    else:
        await _settle(record, deps)


async def when_reconnect_required_flag_mailbox(
    event: MailboxReconnectRequired, deps: RegistryDeps
) -> None:
    """Marks a linked mailbox as needing its user to sign in again; it stays theirs."""
    data = event.data
    flagged = await deps.store.mark_reconnect_required(data.link_id, data.failure.code)
    logger.info("link %s reconnect required: %s", data.link_id, "flagged" if flagged else "ended")


async def when_user_plan_changed_apply(event: UserPlanChanged, deps: RegistryDeps) -> None:
    """Puts the user on their new plan, unless a newer change arrived first."""
    data = event.data
    if data.plan not in deps.plans.limits:
        logger.warning("plan %r from billing is not configured: default applies", data.plan)
    # Ordered to the millisecond, the precision BSON keeps: finer differences are ties.
    changed_at = data.changed_at.replace(microsecond=data.changed_at.microsecond // 1000 * 1000)
    applied = await deps.store.set_plan(data.owner, data.plan, changed_at)
    logger.info("plan %s for %s: %s", data.plan, data.owner, "applied" if applied else "stale")


EVENT_HANDLERS: EventHandlers[RegistryDeps] = {
    LinkRequested: when_link_requested_reserve,
    MailboxVerified: when_mailbox_verified_link,
    VerificationFailed: when_verification_failed_release,
    UserPlanChanged: when_user_plan_changed_apply,
    MailboxReconnectRequired: when_reconnect_required_flag_mailbox,
    # For link-api: the registry reserved this link before the broker offered the sign-in.
    AuthorizationRequired: ignore,
}


# --- housekeeping -----------------------------------------------------------------------------


async def expire_overdue_reservations(deps: RegistryDeps) -> int:
    """Ends links whose verification never finished, freeing their address and slot."""
    overdue = await deps.store.overdue(deps.clock())
    for record in overdue:
        await _expire(record, deps)
    return len(overdue)


async def finish_open_decisions(deps: RegistryDeps, grace: timedelta) -> int:
    """Announces and applies decisions a crash left unfinished (the outbox relay).

    Decisions younger than `grace` are left to the request that is finishing them now.
    """
    unfinished = await deps.store.open_decisions(deps.clock() - grace)
    for link_id, event_id in unfinished:
        record = await deps.store.get_link(link_id)
        if record is not None and record.decision_id == event_id:
            await _settle(record, deps)
        else:
            # The decision lost to another (or was never stored): nothing to announce.
            await deps.store.close_decision(link_id, event_id)
    return len(unfinished)


# --- requests ---------------------------------------------------------------------------------


class UnlinkResult(StrEnum):
    """What an unlink request found."""

    UNLINKED = "unlinked"
    NOT_FOUND = "not_found"
    IN_PROGRESS = "in_progress"


async def unlink_mailbox(
    address: str, deps: RegistryDeps, owner: MailboxOwner | None, by: UnlinkedBy
) -> UnlinkResult:
    """Unlinks the mailbox (of `owner`, or of anyone for an admin) and announces it."""
    record = await _current_link(address, deps)
    if record is None or (owner is not None and record.owner != owner):
        return UnlinkResult.NOT_FOUND
    if record.state in IN_FLIGHT and not record.has_expired(deps.clock()):
        return UnlinkResult.IN_PROGRESS
    if record.state is not LinkState.LINKED:
        return UnlinkResult.NOT_FOUND
    unlinked = _unlinked(record, by)
    # An unlinked mailbox keeps no credentials: the sealed passwords or tokens go with it.
    forgotten = replace(record.mailbox, credentials=None) if record.mailbox else None
    decided = await _decide(
        record, {LinkState.LINKED}, LinkState.UNLINKED, unlinked, deps, forgotten
    )
    return UnlinkResult.UNLINKED if decided.state is LinkState.UNLINKED else UnlinkResult.NOT_FOUND


async def list_mailboxes(owner: MailboxOwner, deps: RegistryDeps) -> list[LinkRecord]:
    """Returns the user's linked mailboxes, oldest first."""
    slots = await deps.store.get_slots(owner)
    records = await deps.store.get_links(list(slots.held))
    linked = [r for r in records if r.state is LinkState.LINKED and r.mailbox is not None]
    return sorted(linked, key=lambda r: r.mailbox.linked_at if r.mailbox else deps.clock())


async def find_owner(address: str, deps: RegistryDeps) -> LinkRecord | None:
    """Returns the link under which this address is linked, if it is (not while in flight)."""
    record = await _current_link(address, deps)
    return record if record is not None and record.state is LinkState.LINKED else None


@dataclass(frozen=True)
class PlanUsage:
    """A user's plan, its limit, and how many slots their links hold (in flight or linked)."""

    plan: str
    limit: int
    used: int


async def get_plan(owner: MailboxOwner, deps: RegistryDeps) -> PlanUsage:
    """Returns the user's plan and how much of it is used."""
    slots = await deps.store.get_slots(owner)
    plan = deps.plans.plan_or_default(slots.plan)
    return PlanUsage(plan, deps.plans.limit_for(plan), len(slots.held))


async def assign_plan(owner: MailboxOwner, plan: str, deps: RegistryDeps) -> PlanUsage:
    """Puts the user on a plan now (an operator's change wins over older billing events)."""
    await deps.store.set_plan(owner, plan, deps.clock())
    return await get_plan(owner, deps)


# --- the steps of a link ----------------------------------------------------------------------


def _new_record(
    event: LinkRequested | MailboxVerified | VerificationFailed, deps: RegistryDeps
) -> LinkRecord:
    data = event.data
    return LinkRecord(
        link_id=data.link_id,
        owner=data.owner,
        address=data.address,
        provider=data.provider,
        state=LinkState.RESERVING,
        expires_at=deps.clock() + deps.reservation_ttl,
    )


async def _start(
    event: LinkRequested | MailboxVerified | VerificationFailed,
    deps: RegistryDeps,
    refusal: LinkRejected | None = None,
) -> tuple[LinkRecord, UserSlots | None]:
    """Returns the link's record, creating it if this is the first of its events to arrive,
    and the user's slots if they were read on the way.

    The topics are not ordered with respect to each other, so a verification result may come
    before the request. A request bound to be refused (`refusal`, or one `_refusal_on_sight`
    finds) is stored already decided: no address or slot is taken only to be given back.
    """
    # No lookup of the record first: a new link's record is missing, and on FerretDB a miss
    # costs as much as a scan. The insert tells whether it existed.
    fresh = _new_record(event, deps)
    slots: UserSlots | None = None
    if refusal is None:
        refusal, slots = await _refusal_on_sight(fresh, deps)
    if refusal is None:
        return await deps.store.add_link(fresh), slots
    decided = replace(fresh, state=LinkState.REJECTED, outbox=refusal.model_dump(mode="json"))
    await deps.store.open_decision(fresh.link_id, str(refusal.event_id))
    stored = await deps.store.add_link(decided)
    if stored.decision_id != str(refusal.event_id):
        # Another event of this link created the record first; its decision stands.
        await deps.store.close_decision(fresh.link_id, str(refusal.event_id))
    return stored, None


async def _refusal_on_sight(
    record: LinkRecord, deps: RegistryDeps
) -> tuple[LinkRejected | None, UserSlots | None]:
    """Looks, without taking anything, for a reason the request must be refused; returns it
    and the user's slots as read."""
    now = deps.clock()
    holder_id = await deps.store.address_holder(record.mailbox_key)
    if holder_id == record.link_id:
        return None, None  # a redelivery: the link already holds its address
    if holder_id is not None:
        holder = await deps.store.get_link(holder_id)
        verdict = judge_address_holder(record.owner, holder, now)
        if verdict is not HolderVerdict.STALE:
            return _refusal(record, verdict, holder), None
    slots = await deps.store.get_slots(record.owner)
    limit = deps.plans.limit_for(slots.plan)
    if len(slots.held) < limit:
        return None, slots
    holders = await deps.store.get_links(list(slots.held))
    if len(holders) < len(slots.held) or any(is_stale(h, now) for h in holders):
        return None, slots  # a slot may be free once cleared: take the careful path
    return _plan_limit_reached(record, limit), None


async def _reserve(record: LinkRecord, slots: UserSlots | None, deps: RegistryDeps) -> LinkRecord:
    """Takes the address, then a plan slot; ends in RESERVED or REJECTED. Safe to repeat."""
    if record.state is not LinkState.RESERVING:
        return await _settle(record, deps)
    if record.has_expired(deps.clock()):
        return await _expire(record, deps)
    refusal = await _take_address(record, deps) or await _take_slot(record, slots, deps)
    if refusal is not None:
        # Settling the rejection gives back whatever was taken.
        return await _decide(record, {LinkState.RESERVING}, LinkState.REJECTED, refusal, deps)
    reserved = _reserved(record)
    return await _decide(record, {LinkState.RESERVING}, LinkState.RESERVED, reserved, deps)


async def _take_address(record: LinkRecord, deps: RegistryDeps) -> LinkRejected | None:
    for _ in range(MAX_ATTEMPTS):
        holder_id = await deps.store.lock_address(record.mailbox_key, record.link_id)
        if holder_id == record.link_id:
            return None
        holder = await deps.store.get_link(holder_id)
        verdict = judge_address_holder(record.owner, holder, deps.clock())
        if verdict is not HolderVerdict.STALE:
            return _refusal(record, verdict, holder)
        if holder is None:
            await deps.store.unlock_address(record.mailbox_key, holder_id)
        else:
            await _let_go(holder, deps)
    raise RuntimeError(f"address {record.address} kept changing hands")


async def _take_slot(
    record: LinkRecord, seen: UserSlots | None, deps: RegistryDeps
) -> LinkRejected | None:
    for _ in range(MAX_ATTEMPTS):
        # The first try may use the slots read a moment ago: take_slot re-checks them.
        slots, seen = seen or await deps.store.get_slots(record.owner), None
        if record.link_id in slots.held:
            return None
        limit = deps.plans.limit_for(slots.plan)
        if len(slots.held) < limit:
            if await deps.store.take_slot(
                record.owner, record.link_id, record.address, slots.plan, limit
            ):
                return None
            continue  # the user's slots or plan changed meanwhile: look again
        if not await _free_stale_slots(record.owner, slots.held, deps):
            return _plan_limit_reached(record, limit)
    raise RuntimeError(f"slots of {record.owner} kept changing")


async def _free_stale_slots(owner: MailboxOwner, held: dict[str, str], deps: RegistryDeps) -> bool:
    # A slot can outlive its link for a moment (a crash between a decision and its effects,
    # or a reservation past its expiry not yet swept): free those before saying no.
    holders = {r.link_id: r for r in await deps.store.get_links(list(held))}
    now = deps.clock()
    freed = False
    for link_id in held:
        holder = holders.get(link_id)
        if holder is None:
            await deps.store.free_slot(owner, link_id)
            freed = True
        elif is_stale(holder, now):
            await _let_go(holder, deps)
            freed = True
    return freed


async def _let_go(holder: LinkRecord, deps: RegistryDeps) -> None:
    """Makes a link that should no longer hold anything give back its address and slot."""
    if holder.has_expired(deps.clock()):
        await _expire(holder, deps)
    else:
        await _settle(holder, deps)


async def _expire(record: LinkRecord, deps: RegistryDeps) -> LinkRecord:
    rejected = _rejected(record, Failure.of(FailureCode.RESERVATION_EXPIRED))
    decided = await _decide(record, IN_FLIGHT, LinkState.REJECTED, rejected, deps)
    logger.info("link %s of %s: reservation expired", record.link_id, record.address)
    return decided


async def _decide(
    record: LinkRecord,
    from_states: set[LinkState] | frozenset[LinkState],
    to_state: LinkState,
    event: Envelope,
    deps: RegistryDeps,
    mailbox: MailboxDetails | None = None,
) -> LinkRecord:
    """Moves the link from one of `from_states` to `to_state` announcing `event`, then settles.

    If another request moved it first, their decision stands and is settled instead.
    """
    # Finish the decision this one replaces first, or its event would never be announced.
    await _settle(record, deps)
    event_id = str(event.event_id)
    # Noted first, so a crash right after the decision leaves it for housekeeping to finish.
    await deps.store.open_decision(record.link_id, event_id)
    decided = await deps.store.decide(
        record.link_id, frozenset(from_states), to_state, event.model_dump(mode="json"), mailbox
    )
    if decided is not None:
        return await _settle(decided, deps, known_open=True)
    await deps.store.close_decision(record.link_id, event_id)
    current = await deps.store.get_link(record.link_id)
    if current is None:  # pragma: no cover - records are never deleted
        raise LookupError(record.link_id)
    return await _settle(current, deps)


async def _settle(record: LinkRecord, deps: RegistryDeps, known_open: bool = False) -> LinkRecord:
    """Announces the record's latest decision if still unfinished, then gives back what an
    ended link held.

    Publishing first keeps each address's events in order on its partition: an address is
    free for the next link only after its MailboxUnlinked or LinkRejected is on the topic.
    Giving back runs on every call, not only the first: a request that took a slot after its
    link was expired gives it back when its event is redelivered.
    """
    decision_id = record.decision_id
    unfinished = decision_id is not None and (
        known_open or await deps.store.is_decision_open(record.link_id, decision_id)
    )
    if unfinished and record.outbox is not None:
        await deps.publisher.publish(_outbox_event(record.outbox))
    if record.state not in HOLDING:
        await deps.store.unlock_address(record.mailbox_key, record.link_id)
        await deps.store.free_slot(record.owner, record.link_id)
    if unfinished and decision_id is not None:
        await deps.store.close_decision(record.link_id, decision_id)
    return record


def _outbox_event(outbox: dict[str, Any]) -> Envelope:
    event = read_document(outbox, _OUTBOX_EVENTS)
    if not isinstance(event, Envelope):
        raise ValueError(f"a decision's stored event does not read back: {event}")
    return event


async def _current_link(address: str, deps: RegistryDeps) -> LinkRecord | None:
    holder_id = await deps.store.address_holder(mailbox_key(address))
    return await deps.store.get_link(holder_id) if holder_id else None


def _refusal(record: LinkRecord, verdict: HolderVerdict, holder: LinkRecord | None) -> LinkRejected:
    if verdict is HolderVerdict.ALREADY_LINKED and holder and holder.mailbox:
        failure = Failure.of(FailureCode.ALREADY_LINKED)
        return _rejected(record, failure, mailbox_id=holder.mailbox.mailbox_id)
    # Nothing more: the caller must not learn anything about another account's mailbox.
    return _rejected(record, Failure.of(_REFUSALS[verdict]))


def _plan_limit_reached(record: LinkRecord, limit: int) -> LinkRejected:
    failure = Failure.of(FailureCode.PLAN_LIMIT_REACHED, f"plan allows {limit} mailboxes")
    return _rejected(record, failure, plan_limit=limit)


# --- the events the registry publishes --------------------------------------------------------


def _reserved(record: LinkRecord) -> LinkReserved:
    data = LinkReservedData(
        link_id=record.link_id,
        owner=record.owner,
        address=record.address,
        expires_at=record.expires_at,
        provider=record.provider,
    )
    return LinkReserved(correlation_id=record.link_id, producer=SERVICE_NAME, data=data)


def _rejected(
    record: LinkRecord,
    failure: Failure,
    plan_limit: int | None = None,
    mailbox_id: str | None = None,
) -> LinkRejected:
    data = LinkRejectedData(
        link_id=record.link_id,
        owner=record.owner,
        address=record.address,
        failure=failure,
        plan_limit=plan_limit,
        mailbox_id=mailbox_id,
    )
    return LinkRejected(correlation_id=record.link_id, producer=SERVICE_NAME, data=data)


def _linked(record: LinkRecord, mailbox: MailboxDetails) -> MailboxLinked:
    data = MailboxLinkedData(
        link_id=record.link_id,
        mailbox_id=mailbox.mailbox_id,
        owner=record.owner,
        address=record.address,
        provider=record.provider,
        linked_at=mailbox.linked_at,
    )
    return MailboxLinked(correlation_id=record.link_id, producer=SERVICE_NAME, data=data)


def _unlinked(record: LinkRecord, by: UnlinkedBy) -> MailboxUnlinked:
    mailbox_id = record.mailbox.mailbox_id if record.mailbox else record.link_id
    data = MailboxUnlinkedData(
        mailbox_id=mailbox_id,
        owner=record.owner,
        address=record.address,
        link_id=record.link_id,
        unlinked_by=by,
    )
    return MailboxUnlinked(correlation_id=record.link_id, producer=SERVICE_NAME, data=data)
