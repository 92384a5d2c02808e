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
        refreshes = await handlers.refresh_due_grants(deps)
        if expired or refreshes.any:
            # Retried refreshes are not the users' doing (see the WARNINGs before this line):
            # our app refused, or the provider down or unreachable.
            logger.info(
                "housekeeping: %d sign-ins expired; refreshes: %d refreshed, %d failed for good "
                "(reconnect required), %d to retry, %d broke",
                expired, refreshes.refreshed, refreshes.failed_for_good, refreshes.retrying,
                refreshes.broke,
            )  # fmt: skip

    return PeriodicTask("oauth-broker-housekeeping", interval, housekeeping_round)
