"""The registry's timers: one expires reservations nobody answered and finishes what a crash
left unannounced; a slower one forgets links ended longer ago than the retention; the health
scheduler requests the checks of mailboxes that are due."""

import logging
from datetime import timedelta

from mailbox_link_shared.timer import PeriodicTask
from registry import handlers, health
from registry.handlers import RegistryDeps

logger = logging.getLogger(__name__)
RETENTION_BATCH = 500


def make_housekeeper(deps: RegistryDeps, interval: float) -> PeriodicTask:
    """Returns the timer; its first round runs at start, to finish what a crash left."""

    async def housekeeping_round() -> None:
        done = await handlers.finish_pending(deps, timedelta(seconds=interval))
        if done.expired or done.finished:
            logger.info("housekeeping: %d expired, %d finished", done.expired, done.finished)

    return PeriodicTask("registry-housekeeping", interval, housekeeping_round)


def make_retention_sweeper(
    deps: RegistryDeps, interval: float, retention: timedelta
) -> PeriodicTask:
    """Returns the timer that keeps the collections the size of the live links, not of history.

    A sweep and not TTL indexes: a link is several documents (request, decisions, claims) that
    go together, and the store under test (FerretDB) has no TTL indexes.
    """

    async def retention_round() -> None:
        forgotten = RETENTION_BATCH
        while forgotten == RETENTION_BATCH:  # a full batch: there may be more
            forgotten = await handlers.forget_ended_links(deps, retention, RETENTION_BATCH)
            if forgotten:
                logger.info("retention: forgot %d ended links", forgotten)

    return PeriodicTask("registry-retention", interval, retention_round)


def make_health_scheduler(deps: RegistryDeps, interval: float) -> PeriodicTask:
    """Returns the timer that requests due health checks (at most the policy's batch a pass).
    Its first pass gives mailboxes linked before health checks existed their schedule."""
    started = False

    async def health_round() -> None:
        nonlocal started
        if not started:
            tracked = await health.track_linked_before(deps)
            if tracked:
                logger.info("health: scheduled checks of %d mailboxes linked before", tracked)
            started = True
        requested = await health.request_due_checks(deps)
        if requested:
            logger.info("health: requested %d checks", requested)

    return PeriodicTask("registry-health", interval, health_round)
