"""link-api's rate limits at the door, with the limits' store faked: per-user and per-account
budgets, and a target login in the verifier's back-off refused with 429, the field named,
and Retry-After."""

from datetime import UTC, datetime, timedelta

import pytest

from link_api.domain.link_request import LinkRequest
from link_api.entrypoints.rate_limits_http import admit_or_429
from link_api.link_budgets import LinkBudgets
from mailbox_link_contract.events import MailboxOwner, ProviderType, ServerSettings
from mailbox_link_shared.api_errors import ApiErrorCode
from mailbox_link_shared.credentials import MailboxCredentials
from mailbox_link_shared.http import ApiError
from mailbox_link_shared.rate_limits import BackOff, Limit, MemorySlots, RateLimiter, login_key

NOW = datetime(2026, 12, 7, 16, 0, 30, tzinfo=UTC)
HOUR = timedelta(hours=1)
BACK_OFF = BackOff(free_failures=2, first_wait=timedelta(minutes=15))


def _budgets(per_user: int = 20, per_account: int = 300) -> LinkBudgets:
    return LinkBudgets(
        RateLimiter(MemorySlots()),
        Limit("user_links", per_user, HOUR),
        Limit("account_links", per_account, HOUR),
        BACK_OFF,
        clock=lambda: NOW,
    )


def _request(user_id: str = "u1", username: str = "victim@example.org") -> LinkRequest:
    server = ServerSettings(host="mail.example.org", port=993, security="ssl", username=username)
    return LinkRequest(
        owner=MailboxOwner(account_id="acme", user_id=user_id),
        address="victim@example.org",
        provider=ProviderType.IMAP,
        imap=server,
        smtp=server.model_copy(update={"port": 465}),
        credentials=MailboxCredentials(imap_password="guess", smtp_password="guess"),
    )


async def _refusal(request: LinkRequest, budgets: LinkBudgets, typed: bool = True) -> ApiError:
    with pytest.raises(ApiError) as refused:
        await admit_or_429(request, typed, budgets)
    return refused.value


async def test_a_user_gets_its_hourly_budget_then_429_with_retry_after() -> None:
    budgets = _budgets(per_user=3)
    for _ in range(3):
        await admit_or_429(_request(), True, budgets)
    error = await _refusal(_request(), budgets)
    assert (error.status_code, error.error) == (429, ApiErrorCode.TOO_MANY_REQUESTS)
    assert error.headers == {"Retry-After": str(3600 - 30)}
    assert error.fields == [("user_id", "try again after 17:00 UTC (in 60 minutes)")]
    await admit_or_429(_request(user_id="u2"), True, budgets)  # another user is not held up


async def test_an_account_budget_holds_across_its_users() -> None:
    budgets = _budgets(per_account=2)
    await admit_or_429(_request(user_id="u1"), True, budgets)
    await admit_or_429(_request(user_id="u2"), True, budgets)
    error = await _refusal(_request(user_id="u3"), budgets)
    assert error.fields[0][0] == "account_id"


async def test_a_login_in_back_off_is_refused_before_spending_any_budget() -> None:
    budgets = _budgets(per_user=1)
    key = login_key("victim@example.org", "mail.example.org")
    for _ in range(2):
        await budgets.limiter.record_failure(key, BACK_OFF, NOW - timedelta(minutes=5))
    error = await _refusal(_request(), budgets)
    assert error.headers == {"Retry-After": str(10 * 60)}
    assert error.fields == [("imap.username", "try again after 16:10 UTC (in 10 minutes)")]
    detected = await _refusal(_request(), budgets, typed=False)
    assert detected.fields[0][0] == "email"
    assert "victim" not in error.message
    assert "guess" not in str(error.fields)
    await admit_or_429(_request(username="someone-else@example.org"), True, budgets)


async def test_without_budgets_nothing_is_limited() -> None:
    for _ in range(50):
        await admit_or_429(_request(), True, None)
