"""The registry's timer: expires reservations nobody answered and finishes half-done decisions."""

import logging
from datetime import timedelta

from mailbox_link_shared.timer import PeriodicTask
from registry import handlers
from registry.handlers import RegistryDeps

logger = logging.getLogger(__name__)


def make_housekeeper(deps: RegistryDeps, interval: float) -> PeriodicTask:
    """Returns the timer; its first round runs at start, to finish what a crash left."""

    async def housekeeping_round() -> None:
        expired = await handlers.expire_overdue_reservations(deps)
        finished = await handlers.finish_open_decisions(deps, timedelta(seconds=interval))
        if expired or finished:
            logger.info("housekeeping: %d expired, %d finished", expired, finished)

    return PeriodicTask("registry-housekeeping", interval, housekeeping_round)
