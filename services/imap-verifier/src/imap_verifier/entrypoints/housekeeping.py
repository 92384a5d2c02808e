"""The verifier's timer: deletes pending documents past their expiry, on stores without TTL
indexes (FerretDB), so an abandoned request's sealed credentials do not stay for ever."""

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime

from mailbox_link_contract.events import utc_now
from mailbox_link_shared.timer import PeriodicTask

logger = logging.getLogger(__name__)


def make_expiry_sweep(
    delete_expired: Callable[[datetime], Awaitable[dict[str, int]]], interval: float
) -> PeriodicTask:
    """Returns the timer; its first round runs at start."""

    async def expiry_round() -> None:
        deleted = await delete_expired(utc_now())
        if any(deleted.values()):
            logger.info("expiry: deleted %s", ", ".join(f"{n} {k}" for k, n in deleted.items()))

    return PeriodicTask("imap-verifier-expiry", interval, expiry_round)
