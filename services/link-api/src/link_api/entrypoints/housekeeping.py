"""link-api's timer, on a store without TTL indexes: deletes what is past its retention."""

import logging

from link_api.adapters.link_store import ExpiresRecords
from mailbox_link_contract.events import utc_now
from mailbox_link_shared.timer import PeriodicTask

logger = logging.getLogger(__name__)


def make_retention_sweep(store: ExpiresRecords, interval: float) -> PeriodicTask:
    """Returns the timer; its first round runs at start."""

    async def retention_round() -> None:
        deleted = await store.delete_expired(utc_now())
        if any(deleted.values()):
            logger.info("retention: deleted %s", ", ".join(f"{n} {k}" for k, n in deleted.items()))

    return PeriodicTask("link-api-retention", interval, retention_round)
