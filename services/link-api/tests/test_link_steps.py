"""The rules the store's status and claims rest on, without a server: ranks, how steps and
claim pointers are encoded so that `$max` keeps the higher, and the retention settings."""

import asyncio
import itertools
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import SecretStr, ValidationError

from link_api.adapters.link_store import decode_step, encode_claim, encode_step, step_id
from link_api.config import DEFAULT_LINK_RETENTION, Settings, longest_event_retention
from link_api.domain.link_status import (
    FINAL_RANK,
    RANK,
    TERMINAL,
    LinkProgress,
    LinkStatus,
    statuses_that_may_become,
)
from link_api.entrypoints.housekeeping import make_retention_sweep
from mailbox_link_contract.events import Failure
from mailbox_link_contract.failures import FailureCode
from mailbox_link_contract.topics import LINK_API, topics_consumed_by
from mailbox_link_shared.crypto import generate_key

AT = datetime(2026, 11, 26, 7, 41, 33, 263001, tzinfo=UTC)
S = LinkStatus


def test_a_link_moves_up_the_ranks_as_it_always_could() -> None:
    # The same moves the conditional updates used to allow, now read off the ranks.
    assert statuses_that_may_become(S.PENDING) == frozenset()
    assert statuses_that_may_become(S.RESERVED) == {S.PENDING}
    assert statuses_that_may_become(S.AUTHORIZATION_REQUIRED) == {S.PENDING, S.RESERVED}
    assert statuses_that_may_become(S.VERIFIED) == {
        S.PENDING, S.RESERVED, S.AUTHORIZATION_REQUIRED,
    }  # fmt: skip
    for end in TERMINAL:
        assert statuses_that_may_become(end) == {
            S.PENDING, S.RESERVED, S.AUTHORIZATION_REQUIRED, S.VERIFIED,
        }  # fmt: skip
        assert RANK[end] == FINAL_RANK
    assert max(RANK.values()) == FINAL_RANK < 10  # one digit: encoded steps sort by it


def _steps() -> list[LinkProgress]:
    return [
        LinkProgress(S.PENDING, AT),
        LinkProgress(S.RESERVED, AT),
        LinkProgress(
            S.AUTHORIZATION_REQUIRED,
            AT,
            authorize_url="https://accounts.google.com/o/oauth2/v2/auth?state=s1",
            authorization_expires_at=AT + timedelta(minutes=10),
        ),
        LinkProgress(S.VERIFIED, AT),
        LinkProgress(S.LINKED, AT, mailbox_id="mb1", already_linked=True),
        LinkProgress(S.LINKED, AT, mailbox_id="mb1", reconnected=True),
        LinkProgress(S.FAILED, AT, failure=Failure.of(FailureCode.TIMEOUT, "after 15 s")),
    ]


@pytest.mark.parametrize("step", _steps(), ids=lambda step: step.status.value)
def test_a_step_reads_back_as_it_was_written(step: LinkProgress) -> None:
    assert decode_step(encode_step(step)) == step


def test_a_higher_step_always_encodes_greater_so_max_keeps_it() -> None:
    later = AT + timedelta(days=3)
    for low, high in itertools.permutations(_steps(), 2):
        if low.rank < high.rank:
            # Whatever the times and contents: only the rank decides.
            early_high = LinkProgress(high.status, AT - timedelta(days=1), event_id="a")
            late_low = LinkProgress(low.status, later, mailbox_id="zzz", event_id="zzzz")
            assert encode_step(high) > encode_step(low)
            assert encode_step(early_high) > encode_step(late_low)


def test_claim_pointers_encode_greater_with_each_generation() -> None:
    pointers = [encode_claim(g, f"link-{9 - g % 10}", AT) for g in (0, 1, 9, 10, 99, 100, 12345)]
    assert pointers == sorted(pointers)


def test_steps_of_a_link_are_named_by_rank() -> None:
    assert step_id("4845c3444a4e4c65b6568bb238c6b44e", 4) == "4845c3444a4e4c65b6568bb238c6b44e/4"


def _settings(**values: object) -> Settings:
    required: dict[str, object] = {
        "encryption_keys": {"k1": SecretStr(generate_key())},
        "service_keys": {"product": SecretStr("caller-token-caller-token-0123")},
    }
    return Settings(**(required | values))  # type: ignore[arg-type]


def test_links_are_kept_a_day_longer_than_kafka_keeps_what_they_answer() -> None:
    # The catalogue: the topics link-api reads keep events 7 days (mailboxes.v1 for ever).
    finite = [s.retention for s in topics_consumed_by(LINK_API) if s.retention is not None]
    assert longest_event_retention() == max(finite) == timedelta(days=7)
    settings = _settings()
    assert settings.link_retention == DEFAULT_LINK_RETENTION == timedelta(days=8)
    assert settings.idempotency_key_retention == timedelta(hours=24)
    assert settings.link_retention > longest_event_retention()


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"link_retention_seconds": 7 * 24 * 3600}, "link_retention_seconds must exceed"),
        ({"link_retention_seconds": 3600}, "link_retention_seconds must exceed"),
        (
            {"idempotency_key_retention_seconds": 9 * 24 * 3600},
            "must not exceed link_retention_seconds",
        ),
        ({"in_flight_expiry_seconds": 9 * 24 * 3600}, "in_flight_expiry_seconds"),
        ({"retention_batch_size": 0}, "retention_batch_size"),
    ],
    ids=["as-long-as-kafka", "an-hour", "keys-outlive-links", "claims-outlive-links", "batch-0"],
)
def test_retentions_that_would_forget_too_early_are_refused(
    values: dict[str, object], named: str
) -> None:
    with pytest.raises(ValidationError, match=named):
        _settings(**values)


class CountingStore:
    def __init__(self) -> None:
        self.rounds: list[datetime] = []

    async def delete_expired(self, now: datetime) -> dict[str, int]:
        self.rounds.append(now)
        return {"links": 1, "steps": 4, "claims": 0, "idempotency_keys": 2}


async def test_the_sweep_runs_at_start_and_then_every_interval() -> None:
    store = CountingStore()
    sweep = make_retention_sweep(store, interval=0.05)
    await sweep.start()
    await asyncio.sleep(0.12)
    await sweep.stop()
    assert 2 <= len(store.rounds) <= 4
    assert all(moment.tzinfo is not None for moment in store.rounds)
