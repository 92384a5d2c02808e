"""link-api's timers: the outbox relay, and on a store without TTL indexes the retention sweep."""

import logging
from datetime import timedelta

from link_api.adapters.link_store import ExpiresRecords
from link_api.handlers import LinkApiDeps, relay_unsent
from mailbox_link_contract.events import utc_now
from mailbox_link_shared import metrics
from mailbox_link_shared.timer import PeriodicTask

logger = logging.getLogger(__name__)


def make_retention_sweep(store: ExpiresRecords, interval: float) -> PeriodicTask:
    """Returns the timer; its first round runs at start."""

    async def retention_round() -> None:
        deleted = await store.delete_expired(utc_now())
        if any(deleted.values()):
            logger.info("retention: deleted %s", ", ".join(f"{n} {k}" for k, n in deleted.items()))

    return PeriodicTask("link-api-retention", interval, retention_round)


def make_outbox_relay(
    deps: LinkApiDeps, interval: float, grace: timedelta, batch: int
) -> PeriodicTask:
    """Returns the relay's timer; its first round runs at start, so a restart carries on what
    the crash left (every replica runs it: each step is decided by a unique insert)."""

    async def relay_round() -> None:
        looked_at = await relay_unsent(deps, grace, batch)
        metrics.outbox_backlog(await deps.store.count_unsent())
        if looked_at:
            logger.info("outbox relay: carried on %s link request(s)", looked_at)

    return PeriodicTask("link-api-outbox-relay", interval, relay_round)
