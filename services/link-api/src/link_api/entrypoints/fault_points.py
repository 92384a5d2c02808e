"""TESTS ONLY: a pause at one crash window of a link request, so a test can SIGKILL link-api
exactly there (tests/e2e/test_link_api_crash_windows.py). Off unless MBL_TEST_PAUSE_FILE is
set; never set it in production."""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

logger = logging.getLogger(__name__)


def pause_file_fault_point(pause_file: str | None) -> Callable[[str], Awaitable[None]] | None:
    """Returns a fault point that, at the window the file names (stored, decided, published),
    writes `<file>.reached` and waits for good; None when no file is set (the handlers' default,
    which does nothing). The file is read at each window, so a test picks the window without
    restarting link-api."""
    if pause_file is None:
        return None
    logger.warning("TEST ONLY: link requests pause at the window named in %s", pause_file)
    path = Path(pause_file)

    def pauses_at(point: str) -> bool:
        return path.is_file() and path.read_text().strip() == point

    async def fault_point(point: str) -> None:
        if await asyncio.to_thread(pauses_at, point):
            reached = path.with_name(path.name + ".reached")
            await asyncio.to_thread(reached.write_text, point)
            await asyncio.Event().wait()  # until the test kills the process

    return fault_point
