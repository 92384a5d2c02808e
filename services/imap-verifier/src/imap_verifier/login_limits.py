"""The verifier's rate limits on the logins it makes for others (docs/adr/0015): before logging
in, each target login (username at host) must be out of back-off and have budget left, and so
must each target host; an authentication failure counts towards that login's back-off. So a
burst of guesses for one login reaches its mail server a bounded number of times, whoever sends
it, on any number of replicas."""

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from mailbox_link_contract.events import ServerSettings
from mailbox_link_contract.failures import FailureCode
from mailbox_link_shared.rate_limits import (
    BackOff,
    Limit,
    RateLimiter,
    host_key,
    login_key,
)


@dataclass(frozen=True)
class LoginLimits:
    """The limiter and the limits it applies to a link's IMAP and SMTP logins."""

    limiter: RateLimiter
    per_login: Limit
    per_host: Limit
    back_off: BackOff
    # The big providers' own servers: their users share them, so no host budget (settings).
    hosts_without_budget: frozenset[str] = frozenset()

    async def before_logins(
        self, imap: ServerSettings, smtp: ServerSettings, now: datetime
    ) -> None:
        """Takes an attempt for each target login and host; raises TooManyAttempts, before
        anything connects, when one is in back-off or out of budget."""
        logins = _distinct(login_key(s.username, s.host) for s in (imap, smtp))
        metered = [s.host for s in (imap, smtp) if not self._unmetered(s.host)]
        hosts = _distinct(host_key(host) for host in metered)
        # Back-off first: it only reads, so a login in back-off spends no budget.
        await self.limiter.check_back_off(logins, self.back_off, now)
        budgets = [(k, self.per_login) for k in logins] + [(k, self.per_host) for k in hosts]
        await self.limiter.take_all(budgets, now)

    def _unmetered(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.hosts_without_budget

    async def after_failures(
        self,
        codes: Iterable[FailureCode],
        imap: ServerSettings,
        smtp: ServerSettings,
        now: datetime,
    ) -> None:
        """Counts a check's authentication failures towards each failed login's back-off, once
        per login: IMAP and SMTP refusing the same username at the same host are one wrong
        password, not two."""
        servers = {FailureCode.IMAP_AUTH_FAILED: imap, FailureCode.SMTP_AUTH_FAILED: smtp}
        failed = [servers[code] for code in codes if code in servers]
        for key in _distinct(login_key(s.username, s.host) for s in failed):
            await self.limiter.record_failure(key, self.back_off, now)


def _distinct(keys: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(keys))
