"""The broker's timer: refreshes tokens before they expire and ends sign-ins nobody finished."""

import logging

from mailbox_link_shared.timer import PeriodicTask
from oauth_broker import handlers
from oauth_broker.handlers import BrokerDeps

logger = logging.getLogger(__name__)


def make_housekeeper(deps: BrokerDeps, interval: float) -> PeriodicTask:
    """Returns the timer; its first round runs at start."""

    async def housekeeping_round() -> None:
        expired = await handlers.end_expired_sessions(deps)
        refreshed = await handlers.refresh_due_grants(deps)
        if expired or refreshed:
            logger.info("housekeeping: %d sign-ins expired, %d refreshed", expired, refreshed)

    return PeriodicTask("oauth-broker-housekeeping", interval, housekeeping_round)
