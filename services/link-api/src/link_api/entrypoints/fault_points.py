"""TESTS ONLY: a pause at one crash window of a link request, so a test can SIGKILL link-api
exactly there (tests/e2e/test_link_api_crash_windows.py). Off unless MBL_TEST_PAUSE_AT names a
window; never set it in production."""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from link_api.handlers import FAULT_POINTS

logger = logging.getLogger(__name__)


def pause_at(point: str | None, marker: str | None) -> Callable[[str], Awaitable[None]] | None:
    """Returns a fault point that, at `point`, writes `marker` and waits for good; None when
    no point is set (the handlers' default, which does nothing)."""
    if point is None:
        return None
    if point not in FAULT_POINTS or marker is None:
        raise ValueError(f"test_pause_at must be one of {FAULT_POINTS}, with test_pause_marker")
    logger.warning("TEST ONLY: every link request pauses at %r", point)

    async def fault_point(reached: str) -> None:
        if reached == point:
            await asyncio.to_thread(Path(marker).write_text, point)
            await asyncio.Event().wait()  # until the test kills the process

    return fault_point
