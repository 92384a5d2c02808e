"""Rate limits shared by link-api and the imap-verifier: fixed-window budgets (per product user,
per account, per target login, per target host) and the back-off after repeated authentication
failures for one target login (docs/adr/0015).

Counters are built from unique inserts alone, because the stores we test on (FerretDB) do not
isolate concurrent updates of one document: a budget of N per window is N possible slot
documents `<key>/<window>/<i>`, and taking an attempt is inserting the first free one. Exactly
one insert of an `_id` wins, so no two attempts share a slot and at most N are granted per
window, on any number of replicas and connections. Slots of a window fill from 0 upwards without
gaps (every taker starts at or below the first free slot, and slots are deleted only after
their window), so the first free slot is found by a binary search of `_id` lookups.

Only hashed keys are stored: what they count, never an address, a username or a password.
"""

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

from mailbox_link_contract.events import MailboxOwner
from mailbox_link_shared import metrics

# More failures of one target login than any back-off lets through in its memory; past this
# the target is at the longest wait anyway, so further failures need not be counted.
MAX_FAILURE_SLOTS = 1024
_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
MAX_HINTS = 10_000


class SlotStore(Protocol):
    """Slot documents by id (adapters: rate_limit_store.MongoSlots; MemorySlots below)."""

    async def add(self, slot_id: str, at: datetime, expires_at: datetime) -> bool:
        """Inserts the slot; False if it exists (another attempt took it)."""
        ...

    async def taken_at(self, slot_id: str) -> datetime | None:
        """Returns when the slot was taken, or None if it is free."""
        ...


@dataclass(frozen=True)
class Limit:
    """At most `count` attempts per fixed window of `per`, for one key of kind `name`."""

    name: str
    count: int
    per: timedelta

    def window(self, now: datetime) -> tuple[int, datetime]:
        """Returns the index of the window `now` falls in, and when that window ends."""
        index = math.floor((now - _EPOCH) / self.per)
        return index, _EPOCH + (index + 1) * self.per


@dataclass(frozen=True)
class BackOff:
    """Authentication failures of one target login: the first `free_failures` cost nothing;
    from then on each attempt waits `first_wait` after the latest failure, doubling with each
    further failure up to `longest_wait`. Failures are remembered between one and two `memory`
    periods (this fixed window and the one before)."""

    free_failures: int = 5
    first_wait: timedelta = timedelta(minutes=15)
    longest_wait: timedelta = timedelta(hours=24)
    memory: timedelta = timedelta(hours=24)

    def wait_after(self, failures: int) -> timedelta:
        """How long after the latest of `failures` the next attempt must wait (0: none)."""
        if failures < self.free_failures:
            return timedelta(0)
        doublings = failures - self.free_failures
        if doublings >= 32:  # far past any sane longest_wait; avoids a huge multiplication
            return self.longest_wait
        return min(self.first_wait * (1 << doublings), self.longest_wait)

    def blocked_until(
        self, failures: int, latest: datetime | None, now: datetime
    ) -> datetime | None:
        """Returns until when the target is blocked, or None if it may be tried now."""
        wait = self.wait_after(failures)
        if not wait or latest is None or latest + wait <= now:
            return None
        return latest + wait


@dataclass(frozen=True)
class TooManyAttempts(Exception):
    """Over a limit: what was over it (`limit`, a Limit name or "back_off") and when to retry."""

    limit: str
    retry_at: datetime

    def __str__(self) -> str:
        return f"{self.limit} until {self.retry_at.isoformat()}"


def retry_after_seconds(retry_at: datetime, now: datetime) -> int:
    """The Retry-After header's whole seconds, at least 1."""
    return max(1, math.ceil((retry_at - now).total_seconds()))


def wait_text(retry_at: datetime, now: datetime) -> str:
    """Says when to try again, e.g. "try again after 17:05 UTC (in 15 minutes)"."""
    minutes = max(1, math.ceil((retry_at - now).total_seconds() / 60))
    at = retry_at.astimezone(UTC)
    day = "" if at.date() == now.astimezone(UTC).date() else f" on {at:%Y-%m-%d}"
    unit = "minute" if minutes == 1 else "minutes"
    return f"try again after {at:%H:%M} UTC{day} (in {minutes} {unit})"


def _digest(*parts: str) -> str:
    # A separator no part contains (parts are normalized text), and a kind prefix, so keys of
    # different kinds never collide; 128 bits are plenty for counting.
    return hashlib.sha256("\x1f".join(parts).encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _host(host: str) -> str:
    return host.strip().rstrip(".").lower()


def login_key(username: str, host: str) -> str:
    """Names one target login: a username at a mail host (case-insensitively, as most servers
    treat logins, so changing the case gains no budget)."""
    return f"login-{_digest('login', username.strip().casefold(), _host(host))}"


def host_key(host: str) -> str:
    """Names one target mail host."""
    return f"host-{_digest('host', _host(host))}"


def user_key(owner: MailboxOwner) -> str:
    """Names one product user."""
    return f"user-{_digest('user', owner.account_id, owner.user_id)}"


def account_key(account_id: str) -> str:
    """Names one product account."""
    return f"account-{_digest('account', account_id)}"


class RateLimiter:
    """Takes attempts from budgets and tracks authentication failures, over a SlotStore."""

    def __init__(self, slots: SlotStore) -> None:
        self._slots = slots
        # Per slot prefix, the first free slot this process last saw: a lower bound of the
        # first free one now (see _first_free).
        self._hints: dict[str, int] = {}

    async def take(self, key: str, limit: Limit, now: datetime) -> None:
        """Takes one attempt of `key`'s budget; raises TooManyAttempts when it is spent."""
        index, ends = limit.window(now)
        prefix = f"{key}/{limit.name}/{int(limit.per.total_seconds())}/{index}"
        first = await self._first_free(prefix, limit.count)
        for slot in range(first, limit.count):
            if await self._slots.add(f"{prefix}/{slot}", now, ends):
                self._remember(prefix, slot + 1)
                return
        self._remember(prefix, limit.count)
        metrics.rate_limit_refused(limit.name)
        raise TooManyAttempts(limit.name, ends)

    async def take_all(self, budgets: Sequence[tuple[str, Limit]], now: datetime) -> None:
        """Takes one attempt of each budget in order; stops at the first that is spent (the
        ones taken before stay taken: an attempt was made)."""
        for key, limit in budgets:
            await self.take(key, limit, now)

    async def record_failure(self, key: str, back_off: BackOff, now: datetime) -> None:
        """Records an authentication failure of a target login."""
        index, ends = _memory_window(back_off, now)
        prefix = f"{key}/failures/{index}"
        first = await self._first_free(prefix, MAX_FAILURE_SLOTS)
        for slot in range(first, MAX_FAILURE_SLOTS):
            if await self._slots.add(f"{prefix}/{slot}", now, ends + back_off.memory):
                self._remember(prefix, slot + 1)
                return

    async def blocked_until(self, key: str, back_off: BackOff, now: datetime) -> datetime | None:
        """Returns until when a target login is in back-off, or None if it may be tried."""
        index, _ = _memory_window(back_off, now)
        latest: datetime | None = None
        failures = 0
        for window in (index, index - 1):
            prefix = f"{key}/failures/{window}"
            count = await self._first_free(prefix, MAX_FAILURE_SLOTS)
            failures += count
            if count and latest is None:
                latest = await self._slots.taken_at(f"{prefix}/{count - 1}")
        return back_off.blocked_until(failures, latest, now)

    async def check_back_off(self, keys: Sequence[str], back_off: BackOff, now: datetime) -> None:
        """Raises TooManyAttempts for the first of `keys` in back-off."""
        for key in keys:
            until = await self.blocked_until(key, back_off, now)
            if until is not None:
                metrics.rate_limit_refused("back_off")
                raise TooManyAttempts("back_off", until)

    async def _first_free(self, prefix: str, cap: int) -> int:
        # Taken slots are a prefix 0..f-1 of the window's, and a slot once taken stays taken
        # while its window lasts, so every slot below the first free one this process saw is
        # still taken: search from there. Gallop (probe low, low+1, low+3, ...: one lookup when
        # the hint is right or nothing is taken), then binary search between the last taken
        # probe and the first free one.
        low = min(self._hints.get(prefix, 0), cap)  # every slot below `low` is taken
        high, step = cap, 1
        while low + step - 1 < cap:
            probe = low + step - 1
            if await self._slots.taken_at(f"{prefix}/{probe}") is None:
                high = probe  # free: the first free slot is in low..probe
                break
            low, step = probe + 1, step * 2
        while low < high:
            middle = (low + high) // 2
            if await self._slots.taken_at(f"{prefix}/{middle}") is not None:
                low = middle + 1
            else:
                high = middle
        self._remember(prefix, low)
        return low

    def _remember(self, prefix: str, first_free: int) -> None:
        if len(self._hints) >= MAX_HINTS:
            self._hints.clear()  # old windows' hints are useless; a lost hint costs lookups
        self._hints[prefix] = first_free


def _memory_window(back_off: BackOff, now: datetime) -> tuple[int, datetime]:
    return Limit("failures", MAX_FAILURE_SLOTS, back_off.memory).window(now)


@dataclass
class MemorySlots:
    """Slots in a dict: one process's fake of the store, for unit tests."""

    slots: dict[str, tuple[datetime, datetime]] = field(default_factory=dict)

    async def add(self, slot_id: str, at: datetime, expires_at: datetime) -> bool:
        """Inserts the slot; False if it exists."""
        if slot_id in self.slots:
            return False
        self.slots[slot_id] = (at, expires_at)
        return True

    async def taken_at(self, slot_id: str) -> datetime | None:
        """Returns when the slot was taken, or None."""
        slot = self.slots.get(slot_id)
        return slot[0] if slot else None

    async def delete_expired(self, now: datetime) -> int:
        """Deletes slots past their expiry; returns how many."""
        old = [k for k, (_, expires_at) in self.slots.items() if expires_at < now]
        for k in old:
            del self.slots[k]
        return len(old)
