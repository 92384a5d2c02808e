"""The registry's timer: expires reservations nobody answered and finishes half-done decisions."""

import asyncio
import contextlib
import logging
from datetime import timedelta

from registry import handlers
from registry.handlers import RegistryDeps

logger = logging.getLogger(__name__)


class Housekeeper:
    """Runs the housekeeping handlers every `interval` seconds while the service runs."""

    def __init__(self, deps: RegistryDeps, interval: float) -> None:
        self._deps = deps
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Starts the timer; the first round runs at once, to finish what a crash left."""
        self._task = asyncio.create_task(self._run(), name="registry-housekeeping")

    async def stop(self) -> None:
        """Stops the timer."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                expired = await handlers.expire_overdue_reservations(self._deps)
                grace = timedelta(seconds=self._interval)
                finished = await handlers.finish_open_decisions(self._deps, grace)
                if expired or finished:
                    logger.info("housekeeping: %d expired, %d finished", expired, finished)
            except Exception:
                # The next round tries again; a storage outage must not end the timer.
                logger.exception("housekeeping round failed")
            await asyncio.sleep(self._interval)
