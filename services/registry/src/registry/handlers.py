"""One function per thing the registry does: reserve, link, release, expire, unlink, answer.

Each loads what it needs and hands the decision to the protocol in decisions.py, which makes
every step safe to repeat and to run concurrently with any other (DESIGN.md).
"""

import logging
import uuid
from dataclasses import dataclass, replace
from datetime import timedelta
from enum import StrEnum

from mailbox_link_contract.events import (
    AuthorizationRequired,
    LinkRequested,
    MailboxOwner,
    MailboxReconnectRequired,
    MailboxVerified,
    UnlinkedBy,
    UserPlanChanged,
    VerificationFailed,
)
from mailbox_link_shared.routing import EventHandlers, ignore
from registry.decisions import current_link, decide, expire, new_record, reserve, settle, start
from registry.domain.events import linked_event, rejected_event, unlinked_event
from registry.domain.links import IN_FLIGHT, LinkRecord, LinkState, MailboxDetails
from registry.ports import RegistryDeps

__all__ = ["EVENT_HANDLERS", "RegistryDeps"]
logger = logging.getLogger(__name__)

# --- events in --------------------------------------------------------------------------------


async def when_link_requested_reserve(event: LinkRequested, deps: RegistryDeps) -> None:
    """Reserves the address and a plan slot for a new link request, or rejects it."""
    await reserve(*await start(event, deps), deps)


async def when_mailbox_verified_link(event: MailboxVerified, deps: RegistryDeps) -> None:
    """Links a verified mailbox if its reservation stands (reserving first if it came late)."""
    record = await reserve(*await start(event, deps), deps)
    if record.has_expired(deps.clock()):
        record = await expire(record, deps)  # too late: the slot may be promised elsewhere
    if record.state is LinkState.RESERVED:
        mailbox = MailboxDetails(
            mailbox_id=uuid.uuid4().hex,
            imap=event.data.imap,
            smtp=event.data.smtp,
            credentials=event.data.verified_credentials,
            linked_at=deps.clock(),
            auth=event.data.auth,
        )
        linked = linked_event(record, mailbox)
        record = await decide(record, {LinkState.RESERVED}, LinkState.LINKED, linked, deps, mailbox)
    logger.info(
        "link %s of %s after verification: %s", record.link_id, record.address, record.state
    )


async def when_verification_failed_release(event: VerificationFailed, deps: RegistryDeps) -> None:
    """Ends the link with the verifier's reason and gives back what it held."""
    rejected = rejected_event(new_record(event, deps), event.data.failure)
    record, _ = await start(event, deps, refusal=rejected)
    if record.state in IN_FLIGHT:
        rejected = rejected_event(record, event.data.failure)
        await decide(record, IN_FLIGHT, LinkState.REJECTED, rejected, deps)
    else:
        await settle(record, deps)


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
        await expire(record, deps)
    return len(overdue)


async def finish_open_decisions(deps: RegistryDeps, grace: timedelta) -> int:
    """Announces and applies decisions a crash left unfinished (the outbox relay).

    Decisions younger than `grace` are left to the request that is finishing them now.
    """
    unfinished = await deps.store.open_decisions(deps.clock() - grace)
    for link_id, event_id in unfinished:
        record = await deps.store.get_link(link_id)
        if record is not None and record.decision_id == event_id:
            await settle(record, deps)
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
    record = await current_link(address, deps)
    if record is None or (owner is not None and record.owner != owner):
        return UnlinkResult.NOT_FOUND
    if record.state in IN_FLIGHT and not record.has_expired(deps.clock()):
        return UnlinkResult.IN_PROGRESS
    if record.state is not LinkState.LINKED:
        return UnlinkResult.NOT_FOUND
    unlinked = unlinked_event(record, by)
    # An unlinked mailbox keeps no credentials: the sealed passwords or tokens go with it.
    forgotten = replace(record.mailbox, credentials=None) if record.mailbox else None
    decided = await decide(
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
    record = await current_link(address, deps)
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
