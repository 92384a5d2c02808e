"""Rate limits: the back-off rule, and one suite of the limiter run on the in-memory fake and on
the session's real MongoDB-protocol server (MongoSlots), so the fake cannot drift from the store.
Concurrent takers on many connections never get more than the budget (unique inserts alone)."""

import asyncio
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from localinfra.stack import LocalStack
from mailbox_link_contract.events import MailboxOwner
from mailbox_link_shared.rate_limit_settings import RateLimitSettings
from mailbox_link_shared.rate_limit_store import COLLECTION, MongoSlots
from mailbox_link_shared.rate_limits import (
    BackOff,
    Limit,
    MemorySlots,
    RateLimiter,
    SlotStore,
    TooManyAttempts,
    account_key,
    host_key,
    login_key,
    retry_after_seconds,
    user_key,
    wait_text,
)

NOW = datetime(2026, 12, 7, 16, 10, 30, tzinfo=UTC)
HOUR = timedelta(hours=1)


# --- The rule -------------------------------------------------------------------------------


def test_back_off_starts_after_the_free_failures_and_doubles_up_to_the_longest_wait() -> None:
    rule = BackOff(free_failures=5, first_wait=timedelta(minutes=15), longest_wait=HOUR * 24)
    waits = [rule.wait_after(n) for n in range(12)]
    assert waits[:5] == [timedelta(0)] * 5
    assert waits[5:9] == [timedelta(minutes=m) for m in (15, 30, 60, 120)]
    assert waits[11] == HOUR * 16
    assert rule.wait_after(12) == rule.wait_after(10_000) == HOUR * 24


def test_back_off_blocks_until_the_wait_after_the_latest_failure_has_passed() -> None:
    rule = BackOff(free_failures=2, first_wait=timedelta(minutes=10))
    latest = NOW - timedelta(minutes=4)
    assert rule.blocked_until(1, latest, NOW) is None
    assert rule.blocked_until(2, latest, NOW) == latest + timedelta(minutes=10)
    assert rule.blocked_until(3, latest, NOW) == latest + timedelta(minutes=20)
    assert rule.blocked_until(2, NOW - timedelta(minutes=11), NOW) is None


def test_keys_are_hashed_case_insensitive_and_distinct_by_kind() -> None:
    key = login_key("Alice@Example.org", "IMAP.example.org.")
    assert key == login_key("alice@example.org", "imap.example.org")
    assert "alice" not in key
    assert "example" not in key
    assert login_key("alice", "h") != login_key("alice", "g")
    owner = MailboxOwner(account_id="acme", user_id="u1")
    keys = {key, host_key("imap.example.org"), user_key(owner), account_key("acme")}
    assert len(keys) == 4
    assert all("acme" not in k and "u1" not in k for k in keys)


def test_wait_is_said_as_a_time_and_in_minutes_and_retry_after_in_whole_seconds() -> None:
    later = NOW + timedelta(minutes=14, seconds=30)
    assert wait_text(later, NOW) == "try again after 16:25 UTC (in 15 minutes)"
    assert wait_text(NOW + timedelta(days=1), NOW).endswith("on 2026-12-08 (in 1440 minutes)")
    assert retry_after_seconds(later, NOW) == 870
    assert retry_after_seconds(NOW, NOW) == 1


def test_default_settings_make_guessing_useless_and_spare_real_users() -> None:
    settings = RateLimitSettings()
    rule = settings.back_off()
    # Guesses one login gets in a day at most: the free ones, then one per growing wait.
    waited, guesses = timedelta(0), rule.free_failures
    while waited + rule.wait_after(guesses) <= HOUR * 24:
        waited += rule.wait_after(guesses)
        guesses += 1
    assert guesses <= 12
    assert settings.user_limit().count >= 20
    assert settings.login_limit().count >= 5


# --- The limiter on both stores ---------------------------------------------------------------


@pytest.fixture(params=["memory", "mongodb"])
async def slots(request: pytest.FixtureRequest) -> AsyncIterator[SlotStore]:
    if request.param == "memory":
        yield MemorySlots()
        return
    # The stack only for this parameter, so the fake's half runs without servers.
    stack: LocalStack = request.getfixturevalue("local_stack")
    uri = stack.endpoints.mongodb_uri
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri, tz_aware=True, maxPoolSize=16)
    name = f"rate-limits-test-{secrets.token_hex(4)}"
    store = MongoSlots(client, name)
    await store.create_indexes()
    yield store
    await client.drop_database(name)
    await client.close()


@pytest.fixture
def limiter(slots: SlotStore) -> RateLimiter:
    return RateLimiter(slots)


async def test_a_budget_grants_its_count_per_window_then_refuses_until_the_window_ends(
    limiter: RateLimiter,
) -> None:
    limit = Limit("user_links", 3, HOUR)
    for _ in range(3):
        await limiter.take("user-k", limit, NOW)
    with pytest.raises(TooManyAttempts) as refused:
        await limiter.take("user-k", limit, NOW + timedelta(minutes=5))
    assert refused.value.limit == "user_links"
    assert refused.value.retry_at == datetime(2026, 12, 7, 17, tzinfo=UTC)
    await limiter.take("user-other", limit, NOW)  # another key has its own budget
    await limiter.take("user-k", limit, refused.value.retry_at)  # the next window


async def test_concurrent_takers_never_get_more_than_the_budget(limiter: RateLimiter) -> None:
    # Two replicas on many connections: 60 attempts at once for a budget of 25.
    limit = Limit("host_logins", 25, timedelta(minutes=1))

    async def attempt() -> bool:
        try:
            await limiter.take("host-k", limit, NOW)
        except TooManyAttempts:
            return False
        return True

    granted = await asyncio.gather(*(attempt() for _ in range(60)))
    assert sum(granted) == 25


async def test_replicas_share_a_budget_whatever_each_has_seen(slots: SlotStore) -> None:
    # Each replica remembers where it last found a free slot; the other's takes make that
    # stale, never wrong.
    first, second = RateLimiter(slots), RateLimiter(slots)
    limit = Limit("login_attempts", 7, HOUR)
    granted = 0
    for n in range(12):
        try:
            await (first if n % 3 else second).take("login-k", limit, NOW)
        except TooManyAttempts:
            continue
        granted += 1
    assert granted == 7


async def test_failures_put_a_login_in_back_off_that_grows_with_each_failure(
    limiter: RateLimiter,
) -> None:
    rule = BackOff(free_failures=3, first_wait=timedelta(minutes=15))
    for n in range(3):
        assert await limiter.blocked_until("login-k", rule, NOW) is None
        await limiter.record_failure("login-k", rule, NOW + timedelta(seconds=n))
    latest = NOW + timedelta(seconds=2)
    assert await limiter.blocked_until("login-k", rule, NOW) == latest + timedelta(minutes=15)
    later = latest + timedelta(minutes=15)
    assert await limiter.blocked_until("login-k", rule, later) is None
    await limiter.record_failure("login-k", rule, later)
    assert await limiter.blocked_until("login-k", rule, later) == later + timedelta(minutes=30)
    assert await limiter.blocked_until("login-other", rule, later) is None
    with pytest.raises(TooManyAttempts) as refused:
        await limiter.check_back_off(["login-other", "login-k"], rule, later)
    assert (refused.value.limit, refused.value.retry_at) == ("back_off", later + 30 * MINUTE)


async def test_failures_are_remembered_into_the_next_window_and_forgotten_after(
    limiter: RateLimiter,
) -> None:
    rule = BackOff(free_failures=2, first_wait=HOUR * 30, longest_wait=HOUR * 30)
    end_of_day = datetime(2026, 12, 7, 23, 59, tzinfo=UTC)
    await limiter.record_failure("login-k", rule, end_of_day)
    await limiter.record_failure("login-k", rule, end_of_day)
    next_day = end_of_day + HOUR * 2
    assert await limiter.blocked_until("login-k", rule, next_day) is not None
    assert await limiter.blocked_until("login-k", rule, next_day + HOUR * 24) is None


async def test_concurrent_failures_are_all_counted(limiter: RateLimiter) -> None:
    rule = BackOff(free_failures=12, first_wait=HOUR)
    await asyncio.gather(*(limiter.record_failure("login-k", rule, NOW) for _ in range(12)))
    assert await limiter.blocked_until("login-k", rule, NOW) == NOW + HOUR


MINUTE = timedelta(minutes=1)


async def test_the_sweep_deletes_only_slots_past_their_window(
    mongo_client: AsyncMongoClient[dict[str, Any]],
) -> None:
    # FerretDB has no TTL indexes: without the sweep slots would pile up for ever.
    name = f"rate-limits-test-{secrets.token_hex(4)}"
    slots = MongoSlots(mongo_client, name)
    limiter = RateLimiter(slots)
    try:
        limit = Limit("user_links", 5, HOUR)
        await limiter.take("user-old", limit, NOW - HOUR * 2)
        await limiter.take("user-new", limit, NOW)
        await limiter.record_failure("login-k", BackOff(), NOW)
        assert await slots.delete_expired(NOW) == 1
        assert await mongo_client[name][COLLECTION].count_documents({}) == 2
    finally:
        await mongo_client.drop_database(name)
