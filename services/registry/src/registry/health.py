"""Linked mailboxes' health (docs/adr/0023): the registry schedules checks, the verifiers run
them, and the registry decides what a result makes of the mailbox.

A change of health is a LINKED -> LINKED decision on the mailbox's chain announcing
MailboxHealthChanged: one insert decides it, whoever applies results at once (DESIGN.md,
"Health"). A check is claimed by a unique insert under `<mailbox id>-<n>`, so two replicas
never request one check twice. The `mailbox_health` document of a mailbox (its schedule and
counts) is a hint: losing a write of it costs at most an extra or a later check, or a result
counted twice.
"""

import logging
import random
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from mailbox_link_contract.events import (
    CheckReason,
    Failure,
    MailboxChecked,
    MailboxCheckRequested,
    MailboxCheckRequestedData,
    MailboxHealth,
)
from mailbox_link_contract.failures import FailureCode
from mailbox_link_contract.topics import REGISTRY
from mailbox_link_shared import metrics
from mailbox_link_shared.rate_limits import Limit
from registry.decisions import Changed, change_mailbox, load, settle
from registry.domain.events import health_changed_event
from registry.domain.health import (
    CheckOutcome,
    HealthCheck,
    HealthRecord,
    judge_check,
    parse_check_id,
)
from registry.domain.links import LinkRecord, LinkState, MailboxDetails, with_health
from registry.ports import RegistryDeps

logger = logging.getLogger(__name__)
_random = random.Random()
# Checks of one mailbox read forward from the hint: a handful at most.
MAX_CHECKS_AHEAD = 100


def _spread() -> float:
    return _random.uniform(-1.0, 1.0)


# --- the schedule -----------------------------------------------------------------------------


async def track(record: LinkRecord, deps: RegistryDeps, first_in: timedelta | None = None) -> None:
    """Gives a linked mailbox its health document, unless it has one (idempotent): its first
    check is an interval away (± jitter), or `first_in`."""
    mailbox = record.mailbox
    if record.state is not LinkState.LINKED or mailbox is None:
        return
    wait = first_in if first_in is not None else deps.health.regular_delay(_spread())
    health = HealthRecord(mailbox.mailbox_id, record.link_id, deps.clock() + wait)
    await deps.store.add_health(health)


async def forget(mailbox_id: str, deps: RegistryDeps) -> None:
    """Drops a mailbox's health document and checks: it is no longer linked."""
    await deps.store.forget_health(mailbox_id)


async def track_linked_before(deps: RegistryDeps, batch: int = 500) -> int:
    """Gives mailboxes linked before health checks existed their health documents, their
    first checks spread over one interval; returns how many. Run once per process start."""
    tracked = 0
    while True:
        link_ids = await deps.store.linked_without_health(batch)
        for link_id in link_ids:
            stored = await deps.store.get_link(link_id)
            record = await load(stored, deps) if stored else None
            if record is not None:
                spread = deps.health.interval * _random.random()
                await track(record, deps, first_in=spread)
                tracked += 1
        if len(link_ids) < batch:
            return tracked


async def _mailbox_link(health: HealthRecord, deps: RegistryDeps) -> LinkRecord | None:
    """The link the mailbox is linked under, if it still is."""
    stored = await deps.store.get_link(health.link_id)
    if stored is None:
        return None
    record = await load(stored, deps)
    mailbox = record.mailbox
    if record.state is LinkState.LINKED and mailbox and mailbox.mailbox_id == health.mailbox_id:
        return record
    return None


async def _latest_check(
    mailbox_id: str, start: int, deps: RegistryDeps
) -> tuple[int, HealthCheck | None]:
    """The number of the mailbox's latest claimed check, read forward from number `start` (a
    hint, itself claimed or applied), and that check if it is still stored (a check whose
    publish failed, or one older than a result applied, is deleted: its number stays used)."""
    number, latest = start, None
    if start > 0:
        latest = await deps.store.get_check(mailbox_id, start)
    for _ in range(MAX_CHECKS_AHEAD):
        following = await deps.store.get_check(mailbox_id, number + 1)
        if following is None:
            return number, latest
        number, latest = number + 1, following
    raise RuntimeError(f"the checks of mailbox {mailbox_id} have no end")


@dataclass(frozen=True)
class Requested:
    """A check asked for: the one just requested, or the one already in flight."""

    check: HealthCheck
    new: bool


async def request_check(
    record: LinkRecord,
    health: HealthRecord,
    reason: CheckReason,
    deps: RegistryDeps,
    admit: Limit | None = None,
) -> Requested:
    """Requests a check of the mailbox linked under `record`, unless one is in flight (then
    returns that one). `admit`: the budget a new check takes first (TooManyAttempts)."""
    mailbox = record.mailbox
    if mailbox is None:  # pragma: no cover - callers pass linked records
        raise ValueError(record.link_id)
    now = deps.clock()
    start = max(health.last_check, health.applied)
    number, latest = await _latest_check(mailbox.mailbox_id, start, deps)
    if latest is not None and _in_flight(latest, health, now, deps):
        return Requested(latest, new=False)
    if admit is not None and deps.check_limiter is not None:
        await deps.check_limiter.take(f"mailbox-checks-{mailbox.mailbox_id}", admit, now)
    check = HealthCheck(mailbox.mailbox_id, number + 1, reason, now)
    if not await deps.store.add_check(check):
        # Another replica claimed this very check just now: it is in flight.
        other = await deps.store.get_check(check.mailbox_id, check.number)
        return Requested(other or check, new=False)
    # Noted before publishing, so the result's hint (written after it, in the usual order of
    # things) is not overwritten by this one.
    await deps.store.note_check_requested(
        check.mailbox_id, check.number, now + deps.health.check_timeout
    )
    try:
        await deps.publisher.publish(await _check_requested(record, mailbox, check, deps))
    except BaseException:
        # Never published, so not in flight: the next request (a retry away) takes the next
        # number.
        await deps.store.forget_check(check.mailbox_id, check.number)
        retry_at = now + deps.health.retry_delay(1)
        await deps.store.note_check_requested(check.mailbox_id, check.number, retry_at)
        raise
    metrics.health_check_requested(reason.value)
    logger.info("mailbox %s: check %s requested (%s)", mailbox.mailbox_id, check.number, reason)
    return Requested(check, new=True)


def _in_flight(check: HealthCheck, health: HealthRecord, now: datetime, deps: RegistryDeps) -> bool:
    return check.number > health.applied and check.requested_at > now - deps.health.check_timeout


async def _check_requested(
    record: LinkRecord, mailbox: MailboxDetails, check: HealthCheck, deps: RegistryDeps
) -> MailboxCheckRequested:
    # The credentials of the verification the mailbox uses: its own link's, or the reconnect's
    # it took. Sealed (bound to the address); an OAuth mailbox's tokens stay at the broker.
    verification = await deps.store.get_verification(mailbox.verified_by or record.link_id)
    data = MailboxCheckRequestedData(
        check_id=check.check_id,
        mailbox_id=mailbox.mailbox_id,
        link_id=record.link_id,
        owner=record.owner,
        address=record.address,
        provider=record.provider,
        oidc_provider=record.oidc_provider,
        auth=mailbox.auth,
        imap=mailbox.imap,
        smtp=mailbox.smtp,
        credentials=verification.credentials if verification else None,
        reason=check.reason,
        requested_at=check.requested_at,
    )
    return MailboxCheckRequested(correlation_id=record.link_id, producer=REGISTRY, data=data)


async def request_due_checks(deps: RegistryDeps) -> int:
    """One scheduler pass: requests the checks of up to `batch` mailboxes that are due;
    returns how many it requested."""
    if not deps.health.scheduled:
        return 0
    requested = 0
    for health in await deps.store.due_health(deps.clock(), deps.health.batch):
        record = await _mailbox_link(health, deps)
        if record is None:
            await forget(health.mailbox_id, deps)  # ended while nobody looked
            continue
        asked = await request_check(record, health, CheckReason.SCHEDULED, deps)
        if asked.new:
            requested += 1
        else:  # in flight: not due again before it times out
            until = asked.check.requested_at + deps.health.check_timeout
            await deps.store.note_check_requested(health.mailbox_id, asked.check.number, until)
    return requested


# --- results ----------------------------------------------------------------------------------


async def apply_result(event: MailboxChecked, deps: RegistryDeps) -> CheckOutcome:
    """Applies a check's result to the mailbox, in order of check number: a result of an
    unknown check, of one older than the latest applied, or of a mailbox no longer linked is
    ignored; a repeated one changes nothing (it only finishes announcing)."""
    data = event.data
    named = parse_check_id(data.check_id)
    if named is None or named[0] != data.mailbox_id:
        return _ignored(data.check_id, "names no check")
    mailbox_id, number = named
    health = await deps.store.get_health(mailbox_id)
    if health is None:
        return _ignored(data.check_id, "the mailbox is not tracked (no longer linked?)")
    record = await _mailbox_link(health, deps)
    if record is None:
        await forget(mailbox_id, deps)
        return _ignored(data.check_id, "the mailbox is no longer linked")
    if number <= health.applied:
        await settle(record, deps)  # a crash may have left its decision unannounced
        return _ignored(data.check_id, "already applied, or older than the latest applied")
    if await deps.store.get_check(mailbox_id, number) is None:
        return _ignored(data.check_id, "never requested")
    assert record.mailbox is not None
    verdict = judge_check(
        record.mailbox.health,
        record.mailbox.health_code,
        data.failure,
        health,
        deps.health,
        _spread(),
    )
    await change_health(record, verdict.health, verdict.code, data.failure, deps)
    await deps.store.note_check_result(
        replace(
            health,
            applied=number,
            last_checked_at=data.checked_at,
            last_failure=data.failure,
            refusals=verdict.refusals,
            back_off=verdict.back_off,
            next_check_at=deps.clock() + verdict.wait,
        )
    )
    await deps.store.forget_checks_before(mailbox_id, number)
    metrics.health_check_result(verdict.outcome.value)
    logger.info(
        "mailbox %s: check %s %s, %s",
        mailbox_id,
        number,
        verdict.outcome,
        verdict.health,
    )
    return verdict.outcome


def _ignored(check_id: str, why: str) -> CheckOutcome:
    metrics.health_check_result(CheckOutcome.IGNORED.value)
    logger.info("check %s ignored: %s", check_id, why)
    return CheckOutcome.IGNORED


async def change_health(
    record: LinkRecord,
    health: MailboxHealth,
    code: FailureCode | None,
    failure: Failure | None,
    deps: RegistryDeps,
) -> LinkRecord:
    """Puts the mailbox linked under `record` in `health` (announcing MailboxHealthChanged)
    unless it is in it already; whoever decides first wins, the others find it done."""

    def change(link: LinkRecord, mailbox: MailboxDetails) -> Changed | None:
        if mailbox.health is health:
            return None
        changed = with_health(mailbox, health, code)
        why = failure if failure is not None and failure.code == code else None
        if why is None and code is not None:
            why = Failure.of(code)
        return changed, health_changed_event(link, changed, mailbox.health, why)

    return await change_mailbox(record, change, deps)


async def reconnected(record: LinkRecord, deps: RegistryDeps) -> None:
    """After a reconnect link's mailbox took its verification: the counts of failures of the
    former credentials start again (a refusal of the new ones is the first in a row)."""
    if record.state is not LinkState.RECONNECTED or record.reconnects is None:
        return
    stored = await deps.store.get_link(record.reconnects)
    mailbox_link = await load(stored, deps) if stored else None
    mailbox = mailbox_link.mailbox if mailbox_link else None
    if mailbox is None:
        return
    health = await deps.store.get_health(mailbox.mailbox_id)
    if health is not None and (health.refusals or health.back_off):
        wait = deps.health.regular_delay(_spread())
        fresh = replace(health, refusals=0, back_off=0, next_check_at=deps.clock() + wait)
        await deps.store.note_check_result(fresh)


# --- on demand --------------------------------------------------------------------------------


async def check_now(record: LinkRecord, deps: RegistryDeps) -> Requested:
    """Requests a check of a linked mailbox now, unless one is in flight (then that one);
    raises TooManyAttempts when the mailbox's on-demand budget is spent."""
    mailbox = record.mailbox
    if mailbox is None:  # pragma: no cover - callers pass linked records
        raise ValueError(record.link_id)
    health = await deps.store.get_health(mailbox.mailbox_id)
    if health is None:
        await track(record, deps)
        health = await deps.store.get_health(mailbox.mailbox_id)
        if health is None:  # pragma: no cover - just inserted, or by another request
            raise LookupError(mailbox.mailbox_id)
    budget = Limit("health_checks", deps.health.on_demand_per_hour, timedelta(hours=1))
    return await request_check(record, health, CheckReason.ON_DEMAND, deps, admit=budget)


# --- listings ---------------------------------------------------------------------------------


async def health_of(record: LinkRecord, deps: RegistryDeps) -> HealthRecord | None:
    """The mailbox's health document, created if a mailbox linked before checks existed has
    none yet."""
    mailbox = record.mailbox
    if mailbox is None:
        return None
    health = await deps.store.get_health(mailbox.mailbox_id)
    if health is None:
        await track(record, deps)
        health = await deps.store.get_health(mailbox.mailbox_id)
    return health
