"""A linked mailbox's health checks: when the next one is due, and what a result makes of the
mailbox (docs/adr/0023). Pure: no I/O, no clock, no randomness of its own."""

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from mailbox_link_contract.events import CheckReason, Failure, MailboxHealth
from mailbox_link_contract.failures import FailureCode, refuses_credentials


@dataclass(frozen=True)
class HealthPolicy:
    """How often mailboxes are checked and how results count (MBL_HEALTH_* settings)."""

    interval: timedelta = timedelta(hours=6)  # zero: no scheduled checks
    jitter: float = 0.2  # each interval is `interval` ± this share of it
    retry: timedelta = timedelta(seconds=60)  # a degraded mailbox's first retry, then doubled
    auth_failures: int = 2  # credential refusals in a row that make it reconnect_required
    batch: int = 50  # checks requested per scheduler pass, at most
    # A check unanswered this long is no longer in flight: the next one may be requested.
    check_timeout: timedelta = timedelta(minutes=5)
    on_demand_per_hour: int = 12  # on-demand checks of one mailbox per hour

    @property
    def scheduled(self) -> bool:
        """True if mailboxes are checked on a schedule (not only on demand)."""
        return self.interval > timedelta(0)

    def regular_delay(self, spread: float) -> timedelta:
        """The wait before a healthy mailbox's next check; `spread` in [-1, 1] picks where in
        the jitter band (so mailboxes linked together are not checked together)."""
        if not self.scheduled:
            return self.check_timeout
        return self.interval * (1 + self.jitter * max(-1.0, min(1.0, spread)))

    def retry_delay(self, level: int) -> timedelta:
        """The wait before retry number `level` (1, 2, ...) of a failing mailbox: doubling from
        `retry`, never longer than the interval."""
        longest = self.interval if self.scheduled else self.retry
        if level >= 32:
            return longest
        return min(self.retry * (1 << max(level - 1, 0)), longest)


def check_id(mailbox_id: str, number: int) -> str:
    """The id of a mailbox's check number `number` (mailbox ids have no '-')."""
    return f"{mailbox_id}-{number}"


def parse_check_id(value: str) -> tuple[str, int] | None:
    """The mailbox id and number a check id names, or None if it names none."""
    mailbox_id, _, number = value.rpartition("-")
    if not mailbox_id or not number.isdigit():
        return None
    return mailbox_id, int(number)


@dataclass(frozen=True)
class HealthCheck:
    """One check of a mailbox, claimed by a unique insert under its id."""

    mailbox_id: str
    number: int
    reason: CheckReason
    requested_at: datetime

    @property
    def check_id(self) -> str:
        return check_id(self.mailbox_id, self.number)


@dataclass(frozen=True)
class HealthRecord:
    """The `mailbox_health` hint of one linked mailbox: its schedule and the counts its next
    result is judged with. Every field may lag; none decides anything on its own."""

    mailbox_id: str
    link_id: str
    next_check_at: datetime
    last_checked_at: datetime | None = None
    last_failure: Failure | None = None
    refusals: int = 0  # credential refusals in a row
    back_off: int = 0  # failures in a row that were not refusals (the retry level)
    last_check: int = 0  # the latest check number known to be claimed
    applied: int = 0  # the latest check number whose result is applied


class CheckOutcome(StrEnum):
    """What one check's result was, for metrics."""

    OK = "ok"
    CREDENTIALS_REFUSED = "credentials_refused"
    FAILED = "failed"
    IGNORED = "ignored"


@dataclass(frozen=True)
class Verdict:
    """What a check's result makes of a mailbox."""

    health: MailboxHealth
    code: FailureCode | None  # why it is not active
    refusals: int
    back_off: int
    wait: timedelta  # until the next check
    outcome: CheckOutcome


def judge_check(
    current: MailboxHealth,
    current_code: FailureCode | None,
    failure: Failure | None,
    record: HealthRecord,
    policy: HealthPolicy,
    spread: float,
) -> Verdict:
    """Decides a check's result: a success makes the mailbox active; `auth_failures` credential
    refusals in a row make it reconnect_required (fewer are confirmed by a retry soon); any
    other failure makes it degraded, retried with back-off, and never reconnect_required (nor
    clears reconnect_required: it proves nothing about the credentials)."""
    regular = policy.regular_delay(spread)
    if failure is None:
        return Verdict(MailboxHealth.ACTIVE, None, 0, 0, regular, CheckOutcome.OK)
    if refuses_credentials(failure.code):
        refusals = record.refusals + 1
        outcome = CheckOutcome.CREDENTIALS_REFUSED
        if refusals >= policy.auth_failures:
            return Verdict(
                MailboxHealth.RECONNECT_REQUIRED, failure.code, refusals, 0, regular, outcome
            )
        wait = policy.retry_delay(1)
        return Verdict(current, current_code, refusals, record.back_off, wait, outcome)
    if current is MailboxHealth.RECONNECT_REQUIRED:
        return Verdict(current, current_code, 0, 0, regular, CheckOutcome.FAILED)
    level = record.back_off + 1
    return Verdict(
        MailboxHealth.DEGRADED,
        failure.code,
        0,
        level,
        policy.retry_delay(level),
        CheckOutcome.FAILED,
    )
