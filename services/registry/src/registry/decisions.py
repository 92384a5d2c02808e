"""The registry's crash-safe decision protocol: how a link takes its address and plan slot,
is decided once, and has its decision announced and its effects applied (DESIGN.md).

Every step is safe to repeat and to run concurrently with any other: decisions are
conditional updates of the link's own record, and their effects are idempotent.
"""

import logging
from dataclasses import replace
from typing import Any

from mailbox_link_contract.events import (
    Envelope,
    Failure,
    LinkRejected,
    LinkRequested,
    MailboxOwner,
    MailboxVerified,
    VerificationFailed,
)
from mailbox_link_contract.failures import FailureCode
from mailbox_link_contract.reading import read_document
from mailbox_link_contract.topics import event_type_of, spec_of
from mailbox_link_shared.addresses import mailbox_key
from registry.adapters.registry_store import UserSlots
from registry.domain.events import rejected_event, reserved_event
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
from registry.ports import RegistryDeps

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


def new_record(
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


async def start(
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
    fresh = new_record(event, deps)
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


async def reserve(record: LinkRecord, slots: UserSlots | None, deps: RegistryDeps) -> LinkRecord:
    """Takes the address, then a plan slot; ends in RESERVED or REJECTED. Safe to repeat."""
    if record.state is not LinkState.RESERVING:
        return await settle(record, deps)
    if record.has_expired(deps.clock()):
        return await expire(record, deps)
    refusal = await _take_address(record, deps) or await _take_slot(record, slots, deps)
    if refusal is not None:
        # Settling the rejection gives back whatever was taken.
        return await decide(record, {LinkState.RESERVING}, LinkState.REJECTED, refusal, deps)
    reserved = reserved_event(record)
    return await decide(record, {LinkState.RESERVING}, LinkState.RESERVED, reserved, deps)


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
        await expire(holder, deps)
    else:
        await settle(holder, deps)


async def expire(record: LinkRecord, deps: RegistryDeps) -> LinkRecord:
    rejected = rejected_event(record, Failure.of(FailureCode.RESERVATION_EXPIRED))
    decided = await decide(record, IN_FLIGHT, LinkState.REJECTED, rejected, deps)
    logger.info("link %s of %s: reservation expired", record.link_id, record.address)
    return decided


async def decide(
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
    await settle(record, deps)
    event_id = str(event.event_id)
    # Noted first, so a crash right after the decision leaves it for housekeeping to finish.
    await deps.store.open_decision(record.link_id, event_id)
    decided = await deps.store.decide(
        record.link_id, frozenset(from_states), to_state, event.model_dump(mode="json"), mailbox
    )
    if decided is not None:
        return await settle(decided, deps, known_open=True)
    await deps.store.close_decision(record.link_id, event_id)
    current = await deps.store.get_link(record.link_id)
    if current is None:  # pragma: no cover - records are never deleted
        raise LookupError(record.link_id)
    return await settle(current, deps)


async def settle(record: LinkRecord, deps: RegistryDeps, known_open: bool = False) -> LinkRecord:
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


async def current_link(address: str, deps: RegistryDeps) -> LinkRecord | None:
    holder_id = await deps.store.address_holder(mailbox_key(address))
    return await deps.store.get_link(holder_id) if holder_id else None


def _refusal(record: LinkRecord, verdict: HolderVerdict, holder: LinkRecord | None) -> LinkRejected:
    if verdict is HolderVerdict.ALREADY_LINKED and holder and holder.mailbox:
        failure = Failure.of(FailureCode.ALREADY_LINKED)
        return rejected_event(record, failure, mailbox_id=holder.mailbox.mailbox_id)
    # Nothing more: the caller must not learn anything about another account's mailbox.
    return rejected_event(record, Failure.of(_REFUSALS[verdict]))


def _plan_limit_reached(record: LinkRecord, limit: int) -> LinkRejected:
    failure = Failure.of(FailureCode.PLAN_LIMIT_REACHED, f"plan allows {limit} mailboxes")
    return rejected_event(record, failure, plan_limit=limit)
