"""The registry's decision protocol: how a link claims its address and a plan slot, is decided
step by step, and has each decision announced (DESIGN.md).

Every function is safe to repeat and to run concurrently with any other, on any number of
connections and replicas: what decides is always an insert under a unique id (a decision
under (link, step), a claim under (resource, generation)); every other write is a hint that
readers check before relying on it.
"""

import asyncio
import functools
import logging
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from mailbox_link_contract.events import (
    Envelope,
    Failure,
    LinkRejected,
    LinkRequested,
    MailboxHealth,
    MailboxHealthChanged,
    MailboxOwner,
    MailboxVerified,
    VerificationFailed,
)
from mailbox_link_contract.failures import FailureCode
from mailbox_link_contract.reading import read_document
from mailbox_link_contract.topics import event_type_of, spec_of
from mailbox_link_shared import metrics
from registry.adapters.registry_store import PendingEntry, UserPlan, Verification
from registry.claims import (
    LiveHolder,
    address_resource,
    holder_of,
    owner_mailbox_resource,
    reconnect_resource,
    slot_resource,
    take,
)
from registry.domain.events import (
    health_changed_event,
    linked_event,
    reconnected_event,
    rejected_event,
    reserved_event,
)
from registry.domain.links import (
    DROPS_VERIFICATION,
    HOLDING,
    IN_FLIGHT,
    UNFINISHED,
    Decision,
    HolderVerdict,
    LinkRecord,
    LinkState,
    MailboxDetails,
    Progress,
    counts_claim,
    judge_address_holder,
    may_reconnect,
    reconnected_details,
)
from registry.ports import RegistryDeps
from registry.user_plans import current_plan

logger = logging.getLogger(__name__)
# A decision announces one event of the mailboxes topic, kept in the decision until published.
_OUTBOX_EVENTS = {event_type_of(model): model for model in spec_of("mailboxes").events}
# Each retry follows a decision made by a competing request; a handful always suffices.
MAX_ATTEMPTS = 10
_REFUSALS = {
    HolderVerdict.ALREADY_LINKED: FailureCode.ALREADY_LINKED,
    HolderVerdict.LINK_IN_PROGRESS: FailureCode.LINK_IN_PROGRESS,
    HolderVerdict.ALREADY_LINKED_ELSEWHERE: FailureCode.ALREADY_LINKED_ELSEWHERE,
}
# The relay's entry opened with a link covers its reservation and its first two decisions.
FIRST_ENTRY_STEP = 1
_RESERVING = frozenset({LinkState.RESERVING})
_RESERVED = frozenset({LinkState.RESERVED})
_LINKED = frozenset({LinkState.LINKED})
_RECONNECTING = frozenset({LinkState.RECONNECTING})


def new_record(
    event: LinkRequested | MailboxVerified | VerificationFailed, deps: RegistryDeps
) -> LinkRecord:
    data = event.data
    return LinkRecord(
        link_id=data.link_id,
        owner=data.owner,
        address=data.address,
        provider=data.provider,
        oidc_provider=None if isinstance(event, VerificationFailed) else event.data.oidc_provider,
        expires_at=deps.clock() + deps.reservation_ttl,
    )


def entry_id(link_id: str, step: int) -> str:
    """The relay's entry for the decisions from `step` on (never reused, so safe to delete)."""
    return f"{link_id}/{step}"


async def start(
    event: LinkRequested | MailboxVerified | VerificationFailed,
    deps: RegistryDeps,
    likely_new: bool,
    about_to_decide: bool = False,
) -> LinkRecord:
    """Returns the link's record with its latest decision, creating it if this is the first of
    its events to arrive (the topics are not ordered with respect to each other).

    `likely_new` inserts before reading: one round trip for a new link request.
    `about_to_decide` trusts a hint of a link reserved and announced without reading its
    decision: the next decision's insert fails if there is a later one, and the caller then
    reads it (decide does).
    """
    if not likely_new:
        stored = await deps.store.get_link(event.data.link_id)
        if stored is not None:
            if about_to_decide and _reserved_at_rest(stored.progress):
                return replace(stored, latest=_as_hinted(stored))
            return await load(stored, deps)
    fresh = new_record(event, deps)
    # Opened first, so a crash right after the insert still leaves the link to housekeeping.
    now = deps.clock()
    entry = PendingEntry(entry_id(fresh.link_id, FIRST_ENTRY_STEP), fresh.link_id, now)
    await deps.store.open_pending(entry)
    existing = await deps.store.add_link(fresh)
    if existing is None:
        return fresh
    record = await load(existing, deps)
    if record.state not in UNFINISHED:
        # A redelivery reopened the entry of decisions long made: nothing left for it.
        await deps.store.close_pending(entry_id(record.link_id, FIRST_ENTRY_STEP))
    return record


def _reserved_at_rest(progress: Progress) -> bool:
    return progress.state is LinkState.RESERVED and progress.announced == progress.step > 0


def _as_hinted(record: LinkRecord) -> Decision:
    # Only what a reservation holds: its state and claims (its event is already announced).
    progress = record.progress
    return Decision(
        progress.step,
        progress.state,
        record.expires_at,
        claims=progress.claims,
        reconnects=progress.reconnects,
    )


async def load(record: LinkRecord, deps: RegistryDeps) -> LinkRecord:
    """Finds the link's latest decision, reading forward from its progress hint."""
    step = record.progress.step
    latest, following = await asyncio.gather(
        deps.store.get_decision(record.link_id, step) if step else _none(),
        deps.store.get_decision(record.link_id, step + 1),
    )
    while following is not None:
        step, latest = step + 1, following
        following = await deps.store.get_decision(record.link_id, step + 1)
    return replace(record, latest=latest)


async def _none() -> None:
    return None


async def decide(
    record: LinkRecord,
    from_states: frozenset[LinkState],
    to_state: LinkState,
    event: Envelope | None,
    deps: RegistryDeps,
    mailbox: MailboxDetails | None = None,
    claims: tuple[str, ...] | None = None,
    reconnects: str | None = None,
) -> LinkRecord:
    """Takes the link from one of `from_states` to `to_state`, announcing `event`, and
    settles it. If a competing request decided first, its decision stands: this one is tried
    again only if the link is still in one of `from_states`. A reconnect link's decisions
    keep naming the link it reconnects."""
    for _ in range(MAX_ATTEMPTS):
        if record.state not in from_states:
            return await settle(record, deps)
        decision = Decision(
            step=record.step + 1,
            state=to_state,
            decided_at=deps.clock(),
            outbox=event.model_dump(mode="json") if event else None,
            mailbox=mailbox or record.mailbox,
            claims=record.claims if claims is None else claims,
            reconnects=reconnects or record.reconnects,
        )
        if await deps.store.add_decision(record.link_id, decision):
            _count_decision(to_state, event)
            return await settle(replace(record, latest=decision), deps)
        # Lost to a competing decision: read the link again, with what its winner announced.
        record = await load(await deps.store.get_link(record.link_id) or record, deps)
    raise RuntimeError(f"link {record.link_id} kept being decided by others")


# Makes new details of a linked mailbox from its current ones and its link, with the event
# announcing the change; None: nothing to change.
Changed = tuple[MailboxDetails, Envelope | None]
MailboxChange = Callable[[LinkRecord, MailboxDetails], Changed | None]


async def change_mailbox(
    record: LinkRecord, change: MailboxChange, deps: RegistryDeps
) -> LinkRecord:
    """Decides LINKED -> LINKED with the details `change` makes of the mailbox's latest ones
    (a flag, a health change, a reconnect); after losing to a competing decision, `change` is
    asked again about the winner's details, so no decision undoes another's. Settles the link
    either way (a redelivery finds the change made and announces it if a crash did not)."""
    for _ in range(MAX_ATTEMPTS):
        if record.state is not LinkState.LINKED or record.mailbox is None:
            return await settle(record, deps)
        changed = change(record, record.mailbox)
        if changed is None:
            return await settle(record, deps)
        mailbox, event = changed
        decision = Decision(
            step=record.step + 1,
            state=LinkState.LINKED,
            decided_at=deps.clock(),
            outbox=event.model_dump(mode="json") if event else None,
            mailbox=mailbox,
            claims=record.claims,
            reconnects=record.reconnects,
        )
        if await deps.store.add_decision(record.link_id, decision):
            _count_decision(LinkState.LINKED, event)
            return await settle(replace(record, latest=decision), deps)
        record = await load(await deps.store.get_link(record.link_id) or record, deps)
    raise RuntimeError(f"link {record.link_id} kept being decided by others")


def _count_decision(state: LinkState, event: Envelope | None) -> None:
    # Counted once, by the writer whose decision won (a repeat or a loser counts nothing).
    if isinstance(event, MailboxHealthChanged):
        metrics.registry_decision(state.value)
        metrics.mailbox_health_changed(event.data.health.value)
        return
    failure = getattr(getattr(event, "data", None), "failure", None)
    code = failure.code if isinstance(failure, Failure) else None
    expired = code is FailureCode.RESERVATION_EXPIRED
    metrics.registry_decision("expired" if expired else state.value, code)


async def settle(record: LinkRecord, deps: RegistryDeps) -> LinkRecord:
    """Announces, in order, the link's decisions not known to be on the topic, then notes its
    progress; once the link is at rest, closes its relay entry.

    Announcing is idempotent (consumers deduplicate by event id), so a lagging hint only
    costs a repeated event. An address counts as free only once its holder's end is
    announced, which keeps each address's events in order on its partition.
    """
    announced = record.progress.announced
    if record.state is LinkState.UNLINKED and announced < record.step:
        # A reconnect committed before this unlink is announced first: no MailboxReconnected
        # may follow the mailbox's MailboxUnlinked on the topic (ADR 0019).
        await _finish_reconnect_of(record, deps)
    for step in range(announced + 1, record.step + 1):
        decision = record.latest
        if step != record.step:
            decision = await deps.store.get_decision(record.link_id, step)
        if decision is not None and decision.outbox is not None:
            await deps.publisher.publish(_outbox_event(decision.outbox))
    progress = Progress(
        record.step,
        record.state,
        announced=record.step,
        claims=record.claims,
        reconnects=record.reconnects,
    )
    if progress != record.progress:
        if record.state in DROPS_VERIFICATION:
            # An ended link keeps no credentials: its sealed passwords or tokens go, and those
            # of the reconnect its mailbox took them from.
            await deps.store.drop_verification(record.link_id)
            if record.mailbox is not None and record.mailbox.verified_by is not None:
                await deps.store.drop_verification(record.mailbox.verified_by)
        await deps.store.note_progress(record.link_id, progress, deps.clock())
        if record.state not in UNFINISHED:
            await deps.store.close_pending(_entry_of(record))
    return replace(record, progress=progress)


def _entry_of(record: LinkRecord) -> str:
    # Decisions 1 and 2 (and a reconnect link's third) are covered by the entry opened with the
    # link; later ones (an unlink) by an entry opened just before them.
    first = record.step <= 2 or record.reconnects is not None
    return entry_id(record.link_id, FIRST_ENTRY_STEP if first else record.step)


def _outbox_event(outbox: dict[str, Any]) -> Envelope:
    event = read_document(outbox, _OUTBOX_EVENTS)
    if not isinstance(event, Envelope):
        raise ValueError(f"a decision's stored event does not read back: {event}")
    return event


async def expire(record: LinkRecord, deps: RegistryDeps) -> LinkRecord:
    rejected = rejected_event(record, Failure.of(FailureCode.RESERVATION_EXPIRED))
    decided = await decide(record, IN_FLIGHT, LinkState.REJECTED, rejected, deps)
    logger.info("link %s: reservation expired (%s)", record.link_id, decided.state)
    return decided


async def live_holder(deps: RegistryDeps, link_id: str, claim_id: str) -> LinkRecord | None:
    """Returns the link holding this claim if it is live and counts it; otherwise makes sure
    its end is announced (expiring it if overdue) and returns None: the claim is free."""
    stored = await deps.store.get_link(link_id)
    if stored is None or stored.progress.at_rest_ended:
        return None  # ended and announced (or forgotten by retention, long after its end)
    record = await load(stored, deps)
    if record.has_expired(deps.clock()):
        record = await expire(record, deps)  # may lose to its own linking: then it holds
    elif record.state not in HOLDING:
        record = await settle(record, deps)
    if record.state in HOLDING and counts_claim(record, claim_id):
        return record
    return None


def _live_holders(deps: RegistryDeps) -> LiveHolder:
    """live_holder bound to `deps`, as claims.py asks for it."""
    return functools.partial(live_holder, deps)


async def reserve(record: LinkRecord, deps: RegistryDeps, reconnect: bool = False) -> LinkRecord:
    """Claims the user's own hold on the mailbox, then a plan slot; ends in RESERVED (linking
    at once if the verification is already stored) or REJECTED. Safe to repeat.

    The address itself is not claimed here: before its verification a request may learn
    nothing about other accounts, and must hold nothing against the address's owner.

    If the user's hold is their own linked link and they asked to `reconnect` (or the mailbox
    needs it), the link is reserved as a reconnect of that mailbox instead: no slot.
    """
    if record.state in (LinkState.RESERVED, LinkState.RECONNECTING):
        return await link_if_verified(await settle(record, deps), deps)
    if record.state is not LinkState.RESERVING:
        return await settle(record, deps)
    if record.has_expired(deps.clock()):
        return await expire(record, deps)
    owner = record.owner
    holder = await take(
        owner_mailbox_resource(owner.account_id, owner.user_id, record.mailbox_key),
        record.link_id,
        deps.store,
        _live_holders(deps),
        likely_new=True,
    )
    if isinstance(holder, LinkRecord):
        if may_reconnect(record, holder, reconnect, deps.clock()):
            return await _reserve_reconnect(record, holder, deps)
        refusal = _refusal(record, judge_address_holder(record.owner, holder, deps.clock()), holder)
        return await decide(record, _RESERVING, LinkState.REJECTED, refusal, deps, claims=())
    slot = await _take_slot(record, deps)
    if isinstance(slot, LinkRejected):
        return await decide(record, _RESERVING, LinkState.REJECTED, slot, deps, claims=(holder,))
    reserved = reserved_event(record)
    record = await decide(
        record,
        _RESERVING,
        LinkState.RESERVED,
        reserved,
        deps,
        claims=(holder, slot),
    )
    return await link_if_verified(record, deps)


async def _reserve_reconnect(
    record: LinkRecord, mailbox_link: LinkRecord, deps: RegistryDeps
) -> LinkRecord:
    """Reserves the link as a reconnect of the user's linked mailbox: it claims the mailbox's
    reconnect hold (one reconnect at a time) and no plan slot, since the mailbox keeps its own."""
    hold = await take(
        reconnect_resource(mailbox_link.link_id),
        record.link_id,
        deps.store,
        _live_holders(deps),
        likely_new=True,
    )
    if isinstance(hold, LinkRecord):
        refusal = rejected_event(record, Failure.of(FailureCode.LINK_IN_PROGRESS))
        return await decide(record, _RESERVING, LinkState.REJECTED, refusal, deps, claims=())
    mailbox_id = mailbox_link.mailbox.mailbox_id if mailbox_link.mailbox else None
    reserved = reserved_event(record, mailbox_id=mailbox_id)
    record = await decide(
        record,
        _RESERVING,
        LinkState.RESERVED,
        reserved,
        deps,
        claims=(hold,),
        reconnects=mailbox_link.link_id,
    )
    logger.info("link %s reserved to reconnect link %s", record.link_id, mailbox_link.link_id)
    return await link_if_verified(record, deps)


async def _take_slot(record: LinkRecord, deps: RegistryDeps) -> str | LinkRejected:
    """Claims one of the user's plan slots 0..limit-1; returns its claim id, or the refusal."""
    owner = record.owner
    plan, hints = await asyncio.gather(
        current_plan(owner, deps.store), deps.store.get_slot_hints(owner)
    )
    limit = deps.plans.limit_for(plan.plan)

    holder = _live_holders(deps)

    def resource(n: int) -> str:
        return slot_resource(owner.account_id, owner.user_id, n)

    # The hints are only an order to try slots in: ours (a redelivery), unused, then the rest.
    unused = [n for n in range(limit) if n not in hints]
    ours = [n for n in range(limit) if hints.get(n) == record.link_id]
    others = [n for n in range(limit) if n in hints and hints[n] != record.link_id]
    for n in ours + unused:
        taken = await take(resource(n), record.link_id, deps.store, holder, n in unused)
        if isinstance(taken, str):
            return await _keep_slot(record, n, taken, plan, limit, hints, deps)
    # Look at every remaining slot at once, then claim one found free.
    holders = await asyncio.gather(*(holder_of(resource(n), deps.store, holder) for n in others))
    for n, current in zip(others, holders, strict=True):
        if current is None:
            taken = await take(resource(n), record.link_id, deps.store, holder)
            if isinstance(taken, str):
                return await _keep_slot(record, n, taken, plan, limit, hints, deps)
    return _plan_limit_reached(record, limit)


async def _keep_slot(
    record: LinkRecord,
    n: int,
    claim: str,
    plan: UserPlan,
    limit: int,
    hints: dict[int, str],
    deps: RegistryDeps,
) -> str | LinkRejected:
    if hints.get(n) != record.link_id:
        await deps.store.note_slot(record.owner, n, record.link_id)
    slots = slots_that_may_be_held(plan, limit, hints)
    if slots <= limit:
        return claim
    # Downgraded: links kept above the new limit count too. Counted after claiming, so two
    # requests racing for the last slot may both give up, but never both stay.
    held = await held_slots(record.owner, deps, slots)
    others = [h for h in held if h.link_id != record.link_id]
    return claim if len(others) < limit else _plan_limit_reached(record, limit)


def slots_that_may_be_held(plan: UserPlan, limit: int, hints: dict[int, str]) -> int:
    """How many of the user's slots may be held: up to the highest limit their plan ever had,
    or beyond it if the hints name a higher slot (the operator lowered a plan's limit)."""
    return max(plan.max_limit, limit, max(hints, default=-1) + 1)


async def held_slots(owner: MailboxOwner, deps: RegistryDeps, slots: int) -> list[LinkRecord]:
    """The live links holding the user's first `slots` slots (read from the claims)."""
    holders = await asyncio.gather(
        *(
            holder_of(
                slot_resource(owner.account_id, owner.user_id, n),
                deps.store,
                _live_holders(deps),
            )
            for n in range(slots)
        )
    )
    return [h for h in holders if h is not None]


async def link_if_verified(
    record: LinkRecord, deps: RegistryDeps, verification: Verification | None = None
) -> LinkRecord:
    """Links a reserved link whose verification is stored (expiring it if too late); the
    caller that just stored the verification passes it.

    Whichever of the reservation and the verification is stored second sees the first, so
    one of the two requests always links it.
    """
    if record.state is LinkState.RECONNECTING:
        return await finish_reconnect(record, deps)
    if record.state not in IN_FLIGHT:
        return record
    if record.has_expired(deps.clock()):
        return await expire(record, deps)
    if record.state is not LinkState.RESERVED:
        return record
    verification = verification or await deps.store.get_verification(record.link_id)
    if verification is None:
        return record
    if record.reconnects is not None:
        # Committed on the link's own chain first, against its expiry or failure: from here
        # on it ends reconnected, or rejected only if its mailbox was unlinked first.
        record = await decide(record, _RESERVED, LinkState.RECONNECTING, None, deps)
        return await finish_reconnect(record, deps)
    # Only now, with control proven, is the address claimed: the first verified link wins.
    address = await take(
        address_resource(record.mailbox_key), record.link_id, deps.store, _live_holders(deps)
    )
    if isinstance(address, LinkRecord):
        verdict = judge_address_holder(record.owner, address, deps.clock())
        refusal = _refusal(record, verdict, address)
        return await decide(record, _RESERVED, LinkState.REJECTED, refusal, deps)
    mailbox = MailboxDetails(
        mailbox_id=uuid.uuid4().hex,
        imap=verification.imap,
        smtp=verification.smtp,
        linked_at=deps.clock(),
        auth=verification.auth,
        authority=verification.authority,
    )
    linked = linked_event(record, mailbox)
    claims = record.claims if address in record.claims else (*record.claims, address)
    return await decide(record, _RESERVED, LinkState.LINKED, linked, deps, mailbox, claims)


async def finish_reconnect(record: LinkRecord, deps: RegistryDeps) -> LinkRecord:
    """Gives a committed reconnect link's verification to its mailbox, then ends the link with
    MailboxReconnected; or with mailbox_unlinked if the mailbox was unlinked first. Safe to
    repeat and to race an unlink or a flag: both go by decisions on the mailbox's link, and
    the mailbox records which reconnect it took (`verified_by`), so it takes it once."""
    if record.state is not LinkState.RECONNECTING or record.reconnects is None:
        return await settle(record, deps)
    stored = await deps.store.get_link(record.reconnects)
    mailbox_link = await load(stored, deps) if stored is not None else None
    for _ in range(MAX_ATTEMPTS):
        mailbox = mailbox_link.mailbox if mailbox_link is not None else None
        if mailbox_link is None or mailbox is None:
            break
        if mailbox.verified_by == record.link_id:
            event = reconnected_event(record, mailbox_link.address, mailbox)
            return await decide(record, _RECONNECTING, LinkState.RECONNECTED, event, deps)
        if mailbox_link.state is not LinkState.LINKED:
            break
        verification = await deps.store.get_verification(record.link_id)
        if verification is None:  # pragma: no cover - stored before the link was committed
            raise LookupError(f"reconnect link {record.link_id} has no verification")
        mailbox_link = await change_mailbox(
            mailbox_link, _takes_reconnect(record.link_id, verification), deps
        )
        if mailbox_link.mailbox is not None and mailbox_link.mailbox.verified_by == record.link_id:
            # The mailbox's former credentials are replaced: they go.
            await deps.store.drop_verification(mailbox.verified_by or mailbox_link.link_id)
    rejected = rejected_event(record, Failure.of(FailureCode.MAILBOX_UNLINKED))
    return await decide(record, _RECONNECTING, LinkState.REJECTED, rejected, deps)


def _takes_reconnect(reconnect_link_id: str, verification: Verification) -> MailboxChange:
    """The mailbox takes the reconnect's verification (once); one that was not active is
    announced active again (MailboxHealthChanged), beside the reconnect link's own
    MailboxReconnected: consumers follow health by one event type."""

    def change(link: LinkRecord, mailbox: MailboxDetails) -> Changed | None:
        if mailbox.verified_by == reconnect_link_id:
            return None
        details = reconnected_details(mailbox, reconnect_link_id, verification)
        if mailbox.health is MailboxHealth.ACTIVE:
            return details, None
        return details, health_changed_event(link, details, mailbox.health, None)

    return change


async def _finish_reconnect_of(mailbox_link: LinkRecord, deps: RegistryDeps) -> None:
    """Finishes the reconnect of this mailbox's link that is committed, if any."""
    holder = await holder_of(
        reconnect_resource(mailbox_link.link_id), deps.store, _live_holders(deps)
    )
    if holder is not None and holder.state is LinkState.RECONNECTING:
        await finish_reconnect(holder, deps)


async def current_link(mailbox_key: str, deps: RegistryDeps) -> LinkRecord | None:
    """The live link holding this mailbox, if any."""
    return await holder_of(
        address_resource(mailbox_key),
        deps.store,
        _live_holders(deps),
    )


def _refusal(record: LinkRecord, verdict: HolderVerdict, holder: LinkRecord | None) -> LinkRejected:
    if verdict is HolderVerdict.ALREADY_LINKED and holder and holder.mailbox:
        failure = Failure.of(FailureCode.ALREADY_LINKED)
        return rejected_event(record, failure, mailbox_id=holder.mailbox.mailbox_id)
    if verdict is HolderVerdict.STALE:  # pragma: no cover - take() returns only live holders
        raise AssertionError("a stale holder was returned as live")
    # Nothing more: the caller must not learn anything about another account's mailbox.
    return rejected_event(record, Failure.of(_REFUSALS[verdict]))


def _plan_limit_reached(record: LinkRecord, limit: int) -> LinkRejected:
    failure = Failure.of(FailureCode.PLAN_LIMIT_REACHED, f"plan allows {limit} mailboxes")
    return rejected_event(record, failure, plan_limit=limit)
