"""Reading a chain of documents numbered 0, 1, 2, ... (a resource's claims, a user's plan
versions), each inserted once by whoever read the one before it.

So the chain has no gaps, except where retention deleted a number that has successors, and
its latest document is found by reading forward from any number known to exist (the hint
kept on number 0) until one is missing.
"""

from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")
# A bound on a chain's length, against a corrupt store.
MAX_LENGTH = 1000


async def latest_of(
    get: Callable[[int], Awaitable[T | None]], start: int, known: T | None, chain: str
) -> T:
    """Returns the chain's latest document, reading forward from number `start` (whose
    document is `known`, if the caller has read it already)."""
    number, current = start, known if known is not None else await get(start)
    for _ in range(MAX_LENGTH):
        following = await get(number + 1)
        if following is None and current is not None:
            return current
        # A missing number behind the latest was deleted by retention: it has successors.
        number, current = number + 1, following
    raise RuntimeError(f"{chain} has no end")
