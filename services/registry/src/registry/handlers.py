"""One function per thing the registry does: reserve, link, release, expire, unlink, answer.

Each loads what it needs and hands the decision to the protocol in decisions.py, which makes
every step safe to repeat and to run concurrently with any other (DESIGN.md).
"""

import asyncio
import logging
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum

from mailbox_link_contract.events import (
    AuthorizationRequired,
    LinkRequested,
    MailboxChecked,
    MailboxCheckRequested,
    MailboxHealth,
    MailboxOwner,
    MailboxReconnectRequired,
    MailboxVerified,
    UnlinkedBy,
    UserPlanChanged,
    VerificationFailed,
)
from mailbox_link_shared.addresses import mailbox_key
from mailbox_link_shared.routing import EventHandlers, ignore
from mailbox_link_shared.tracing import DECISION, span
from registry import health
from registry.adapters.registry_store import PendingEntry, Verification
from registry.decisions import (
    current_link,
    decide,
    entry_id,
    expire,
    finish_reconnect,
    held_slots,
    link_if_verified,
    load,
    reserve,
    settle,
    slots_that_may_be_held,
    start,
)
from registry.domain.events import rejected_event, unlinked_event
from registry.domain.links import DROPS_VERIFICATION, IN_FLIGHT, LinkRecord, LinkState
from registry.ports import RegistryDeps
from registry.user_plans import apply_plan, current_plan

__all__ = ["EVENT_HANDLERS", "RegistryDeps"]
logger = logging.getLogger(__name__)
_LINKED = frozenset({LinkState.LINKED})

# --- events in --------------------------------------------------------------------------------


async def when_link_requested_reserve(event: LinkRequested, deps: RegistryDeps) -> None:
    """Reserves the address and a plan slot for a new link request, or rejects it."""
    with span("registry reserve") as decision:
        record = await start(event, deps, likely_new=True)
        record = await reserve(record, deps, reconnect=event.data.reconnect)
        decision.set_attribute(DECISION, str(record.state))
    await health.track(record, deps)  # linked at once if its verification came first
    logger.info("link %s of %s: %s", record.link_id, record.address, record.state)


async def when_mailbox_verified_link(event: MailboxVerified, deps: RegistryDeps) -> None:
    """Links a verified mailbox if its reservation stands; if the request has not been
    reserved yet, keeps the verification for the reservation to link."""
    data = event.data
    # Stored before the link is read: see link_if_verified.
    verification = Verification(
        data.imap, data.smtp, data.auth, data.verified_credentials, data.authority
    )
    await deps.store.add_verification(data.link_id, verification)
    with span("registry link") as decision:
        record = await start(event, deps, likely_new=False, about_to_decide=True)
        record = await link_if_verified(record, deps, verification)
        decision.set_attribute(DECISION, str(record.state))
    if record.state in DROPS_VERIFICATION:
        # Too late (expired, refused): the credentials must not outlive the request.
        await deps.store.drop_verification(record.link_id)
        await settle(record, deps)
    await health.track(record, deps)  # a linked mailbox is checked from now on
    await health.reconnected(record, deps)  # or a reconnected one's counts start again
    logger.info("link %s of %s after verification: %s", data.link_id, data.address, record.state)


async def when_verification_failed_release(event: VerificationFailed, deps: RegistryDeps) -> None:
    """Ends the link with the verifier's reason; ending gives back what it held."""
    record = await start(event, deps, likely_new=False)
    rejected = rejected_event(record, event.data.failure)
    await decide(record, IN_FLIGHT, LinkState.REJECTED, rejected, deps)


async def when_reconnect_required_flag_mailbox(
    event: MailboxReconnectRequired, deps: RegistryDeps
) -> None:
    """Marks a linked mailbox as needing its user to sign in again; it stays theirs."""
    data = event.data
    stored = await deps.store.get_link(data.link_id)
    record = await load(stored, deps) if stored else None
    if record is not None and record.state is LinkState.RECONNECTED and record.reconnects:
        # Tokens a reconnect brought, named by its link: the mailbox is the reconnected one.
        stored = await deps.store.get_link(record.reconnects)
        record = await load(stored, deps) if stored else None
    if record is not None:
        # The same decision a health check's refusals make, announced MailboxHealthChanged.
        record = await health.change_health(
            record, MailboxHealth.RECONNECT_REQUIRED, data.failure.code, data.failure, deps
        )
    flagged = record is not None and record.mailbox and record.mailbox.reconnect_required
    logger.info("link %s reconnect required: %s", data.link_id, "flagged" if flagged else "ended")


async def when_mailbox_checked_apply(event: MailboxChecked, deps: RegistryDeps) -> None:
    """Applies a health check's result to its mailbox (active, degraded, reconnect_required)."""
    await health.apply_result(event, deps)


async def when_user_plan_changed_apply(event: UserPlanChanged, deps: RegistryDeps) -> None:
    """Puts the user on their new plan, unless a newer change arrived first."""
    data = event.data
    if data.plan not in deps.plans.limits:
        logger.warning("plan %r from billing is not configured: default applies", data.plan)
    # Ordered to the millisecond, the precision BSON keeps: finer differences are ties.
    changed_at = data.changed_at.replace(microsecond=data.changed_at.microsecond // 1000 * 1000)
    limit = deps.plans.limit_for(data.plan)
    applied = await apply_plan(data.owner, data.plan, changed_at, limit, deps.store)
    logger.info("plan %s for %s: %s", data.plan, data.owner, "applied" if applied else "stale")


EVENT_HANDLERS: EventHandlers[RegistryDeps] = {
    LinkRequested: when_link_requested_reserve,
    MailboxVerified: when_mailbox_verified_link,
    VerificationFailed: when_verification_failed_release,
    UserPlanChanged: when_user_plan_changed_apply,
    MailboxReconnectRequired: when_reconnect_required_flag_mailbox,
    # For link-api: the registry reserved this link before the broker offered the sign-in.
    AuthorizationRequired: ignore,
    # The registry's own request (on the topic it shares with the results): for the verifiers.
    MailboxCheckRequested: ignore,
    MailboxChecked: when_mailbox_checked_apply,
}


# --- housekeeping -----------------------------------------------------------------------------


@dataclass(frozen=True)
class HousekeepingRound:
    """What one round of housekeeping did."""

    expired: int = 0
    finished: int = 0
    forgotten: int = 0


async def finish_pending(
    deps: RegistryDeps, grace: timedelta, batch: int = 1000
) -> HousekeepingRound:
    """Expires reservations nobody answered, and announces what a crash left unannounced.

    Entries younger than `grace` are left to the request finishing them now, unless overdue.
    """
    expired = finished = 0
    now = deps.clock()
    for entry in await deps.store.pending(batch):
        stored = await deps.store.get_link(entry.link_id)
        if stored is None:
            await deps.store.close_pending(entry.entry_id)
            continue
        record = await load(stored, deps)
        if record.has_expired(now):
            await expire(record, deps)
            expired += 1
        elif record.state is LinkState.RECONNECTING and entry.opened_at < now - grace:
            await finish_reconnect(record, deps)  # a crash left it between its two decisions
            finished += 1
        elif entry.opened_at < now - grace and record.state not in IN_FLIGHT:
            await settle(record, deps)
            # Settling closes the entry of the latest decision; this one may be older.
            await deps.store.close_pending(entry.entry_id)
            finished += 1
    return HousekeepingRound(expired=expired, finished=finished)


async def forget_ended_links(deps: RegistryDeps, retention: timedelta, batch: int = 500) -> int:
    """Deletes links that ended more than `retention` ago, and the claims nobody reads.

    Readers of a resource start from the latest generation named by its generation 0, which
    is never deleted, so only generations behind that hint may go. (A hint write lands right
    after the claim it reports; one delayed by the whole retention is assumed not to happen.)
    """
    ended = await deps.store.ended_before(deps.clock() - retention, batch)
    for stored in ended:
        record = await load(stored, deps)
        # A link keeps its claims from step to step: its latest decision names them all.
        for claim in record.claims:
            resource, generation = claim.rsplit("#", 1)
            head = await deps.store.get_claim(resource, 0)
            if int(generation) > 0 and head is not None and int(generation) < head.latest:
                await deps.store.forget_claim(resource, int(generation))
        # A reconnected link's verification is its mailbox's now (dropped when that ends).
        keep = record.state is LinkState.RECONNECTED
        await deps.store.forget_link(record.link_id, record.step, keep_verification=keep)
    return len(ended)


# --- requests ---------------------------------------------------------------------------------


class UnlinkResult(StrEnum):
    """What an unlink request found."""

    UNLINKED = "unlinked"
    NOT_FOUND = "not_found"
    IN_PROGRESS = "in_progress"


async def unlink_mailbox(
    address: str,
    deps: RegistryDeps,
    owner: MailboxOwner | None,
    by: UnlinkedBy,
    mailbox_id: str | None = None,
) -> UnlinkResult:
    """Unlinks the mailbox (of `owner`, or of anyone for an admin; only if it is still
    `mailbox_id` when given) and announces it."""
    record = await current_link(mailbox_key(address), deps)
    if record is None or (owner is not None and record.owner != owner):
        return UnlinkResult.NOT_FOUND
    if mailbox_id is not None and (
        record.mailbox is None or record.mailbox.mailbox_id != mailbox_id
    ):
        return UnlinkResult.NOT_FOUND
    if record.state in IN_FLIGHT:
        return UnlinkResult.IN_PROGRESS
    # Opened first: no event brought this decision, so only housekeeping would announce it
    # if this process stopped right after it.
    step = record.step + 1
    await deps.store.open_pending(
        PendingEntry(entry_id(record.link_id, step), record.link_id, deps.clock())
    )
    unlinked = unlinked_event(record, by)
    decided = await decide(record, _LINKED, LinkState.UNLINKED, unlinked, deps)
    if decided.state is not LinkState.UNLINKED:
        return UnlinkResult.NOT_FOUND
    if decided.mailbox is not None:
        # No more checks (a crash here leaves it to the scheduler, which finds it unlinked).
        await health.forget(decided.mailbox.mailbox_id, deps)
    return UnlinkResult.UNLINKED


async def unlink_mailbox_by_id(
    mailbox_id: str, deps: RegistryDeps, owner: MailboxOwner
) -> UnlinkResult:
    """Unlinks the user's mailbox with this mailbox_id: one of their few linked mailboxes."""
    for record in await list_mailboxes(owner, deps):
        if record.mailbox is not None and record.mailbox.mailbox_id == mailbox_id:
            return await unlink_mailbox(record.address, deps, owner, UnlinkedBy.USER, mailbox_id)
    return UnlinkResult.NOT_FOUND


async def list_mailboxes(owner: MailboxOwner, deps: RegistryDeps) -> list[LinkRecord]:
    """Returns the user's linked mailboxes, oldest first."""
    records = await _user_links(owner, deps)
    linked = [r for r in records if r.state is LinkState.LINKED and r.mailbox is not None]
    return sorted(linked, key=lambda r: r.mailbox.linked_at if r.mailbox else deps.clock())


async def _user_links(owner: MailboxOwner, deps: RegistryDeps) -> list[LinkRecord]:
    """The live links holding the user's slots (every slot that may be held, not the hints)."""
    plan, hints = await asyncio.gather(
        current_plan(owner, deps.store), deps.store.get_slot_hints(owner)
    )
    slots = slots_that_may_be_held(plan, deps.plans.limit_for(plan.plan), hints)
    return await held_slots(owner, deps, slots)


async def find_mailbox(account_id: str, mailbox_id: str, deps: RegistryDeps) -> LinkRecord | None:
    """Returns the link under which the mailbox with this id is linked in this account; None
    for an id that never existed, another account's mailbox and an unlinked one alike."""
    for link_id in await deps.store.links_naming_mailbox(mailbox_id):
        stored = await deps.store.get_link(link_id)
        if stored is None or stored.owner.account_id != account_id:
            continue
        record = await load(stored, deps)
        mailbox = record.mailbox
        if record.state is LinkState.LINKED and mailbox and mailbox.mailbox_id == mailbox_id:
            return record
    return None


async def find_owner(address: str, deps: RegistryDeps) -> LinkRecord | None:
    """Returns the link under which this address is linked, if it is (not while in flight)."""
    record = await current_link(mailbox_key(address), deps)
    return record if record is not None and record.state is LinkState.LINKED else None


@dataclass(frozen=True)
class PlanUsage:
    """A user's plan, its limit, and how many slots their links hold (in flight or linked)."""

    plan: str
    limit: int
    used: int


async def get_plan(owner: MailboxOwner, deps: RegistryDeps) -> PlanUsage:
    """Returns the user's plan and how much of it is used."""
    stored = await current_plan(owner, deps.store)
    plan = deps.plans.plan_or_default(stored.plan)
    used = len(await _user_links(owner, deps))
    return PlanUsage(plan, deps.plans.limit_for(plan), used)


async def assign_plan(owner: MailboxOwner, plan: str, deps: RegistryDeps) -> PlanUsage:
    """Puts the user on a plan now (an operator's change wins over older billing events)."""
    await apply_plan(owner, plan, deps.clock(), deps.plans.limit_for(plan), deps.store)
    return await get_plan(owner, deps)
