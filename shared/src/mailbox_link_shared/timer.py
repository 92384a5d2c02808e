"""A timer that runs one round of a service's housekeeping every few seconds while it runs."""

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)


class PeriodicTask:
    """Runs `run_round` every `interval` seconds; the first round runs at start.

    A failing round is logged and the next one tries again: a storage outage must not end the
    timer.
    """

    def __init__(self, name: str, interval: float, run_round: Callable[[], Awaitable[None]]):
        self._name = name
        self._interval = interval
        self._run_round = run_round
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Starts the timer."""
        self._task = asyncio.create_task(self._run(), name=self._name)

    async def stop(self) -> None:
        """Stops the timer, cancelling a round in progress."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                await self._run_round()
            except Exception:
                logger.exception("%s: round failed", self._name)
            await asyncio.sleep(self._interval)
