"""Rate limits at the door (docs/adr/0015): a link request is admitted only within its product
user's and account's hourly budgets, and never for a target login the imap-verifier put in
back-off after repeated authentication failures (it records them in the limits' shared store).
Checked before anything is stored or emitted; a refused request costs only its budget slot."""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from link_api.domain.link_request import LinkRequest
from mailbox_link_contract.events import utc_now
from mailbox_link_shared.rate_limits import (
    BackOff,
    Limit,
    RateLimiter,
    TooManyAttempts,
    account_key,
    login_key,
    user_key,
)


@dataclass(frozen=True)
class LinkBudgets:
    """The limiter and the limits link-api applies (wired in bootstrap)."""

    limiter: RateLimiter
    per_user: Limit
    per_account: Limit
    back_off: BackOff
    clock: Callable[[], datetime] = utc_now


class OverLimit(Exception):
    """A request over a limit: the field to name, what is over, and when to retry."""

    def __init__(self, field: str, message: str, retry_at: datetime, now: datetime) -> None:
        super().__init__(message)
        self.field, self.message, self.retry_at, self.now = field, message, retry_at, now


async def admit_link_request(request: LinkRequest, typed: bool, budgets: LinkBudgets) -> None:
    """Takes the request's user and account budgets; raises OverLimit if one is spent or a
    target login of a password link is in back-off (checked first: it spends nothing)."""
    now = budgets.clock()
    limiter = budgets.limiter
    if request.credentials is not None:
        checked: set[str] = set()
        for kind, server in (("imap", request.imap), ("smtp", request.smtp)):
            key = login_key(server.username, server.host)
            if key in checked:
                continue  # SMTP with the IMAP login at the same host: one back-off
            checked.add(key)
            until = await limiter.blocked_until(key, budgets.back_off, now)
            if until is not None:
                field = f"{kind}.username" if typed else "email"
                message = (
                    f"Too many wrong passwords were tried recently for this {kind.upper()} login, "
                    "so it is paused to protect the mailbox."
                )
                raise OverLimit(field, message, until, now)
    for field, key, limit, whose in (
        ("user_id", user_key(request.owner), budgets.per_user, "this user"),
        ("account_id", account_key(request.owner.account_id), budgets.per_account, "this account"),
    ):
        try:
            await limiter.take(key, limit, now)
        except TooManyAttempts as over:
            message = (
                f"{whose.capitalize()} has made the {limit.count} link requests allowed per hour."
            )
            raise OverLimit(field, message, over.retry_at, now) from None
