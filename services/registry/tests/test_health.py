"""Mailbox health (docs/adr/0023) on in-memory storage: the schedule, the checks requested, what
their results make of the mailbox, the events announcing it, the listing and on-demand checks."""

import asyncio
from datetime import timedelta
from typing import TypeVar

import httpx
import pytest
from pydantic import SecretStr

from mailbox_link_contract.events import (
    CheckReason,
    Envelope,
    Failure,
    LinkRequested,
    MailboxChecked,
    MailboxCheckedData,
    MailboxCheckRequested,
    MailboxHealth,
    MailboxHealthChanged,
    MailboxLinked,
    MailboxOwner,
    MailboxReconnected,
    MailboxReconnectRequired,
    MailboxReconnectRequiredData,
    ProviderType,
)
from mailbox_link_contract.failures import FailureCode
from mailbox_link_shared.http import CallerKeys, build_http_app
from mailbox_link_shared.publishing import RecordingPublisher
from mailbox_link_shared.rate_limits import MemorySlots, RateLimiter
from mailbox_link_shared.scopes import Scope, caller_keys
from registry import handlers, health
from registry.adapters import registry_store
from registry.domain.health import (
    CheckOutcome,
    HealthPolicy,
    HealthRecord,
    judge_check,
    parse_check_id,
)
from registry.domain.links import MailboxDetails
from registry.domain.plans import DEFAULT_PLANS, PlanTable
from registry.entrypoints.http import build_router
from registry.handlers import RegistryDeps, UnlinkResult
from registry_fakes import (
    FailingOncePublisher,
    FakeClock,
    InMemoryRegistryStore,
    request_data,
    requested_event,
    verified_event,
)

ALICE = MailboxOwner(account_id="acme", user_id="alice")
ADDRESS = "box@example.org"
INTERVAL = timedelta(hours=6)
POLICY = HealthPolicy(
    interval=INTERVAL,
    jitter=0.0,
    retry=timedelta(seconds=60),
    auth_failures=2,
    batch=50,
    check_timeout=timedelta(minutes=5),
    on_demand_per_hour=3,
)
REFUSED = Failure.of(FailureCode.IMAP_AUTH_FAILED, "NO [AUTHENTICATIONFAILED]")
UNREACHABLE = Failure.of(FailureCode.IMAP_UNREACHABLE)
E = TypeVar("E", bound=Envelope)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(clock: FakeClock) -> InMemoryRegistryStore:
    return InMemoryRegistryStore(clock)


@pytest.fixture
def deps(store: InMemoryRegistryStore, clock: FakeClock) -> RegistryDeps:
    return RegistryDeps(
        store,
        RecordingPublisher(),
        PlanTable(DEFAULT_PLANS, "basic"),
        clock=clock,
        health=POLICY,
        check_limiter=RateLimiter(MemorySlots()),
    )


def _of(deps: RegistryDeps, kind: type[E]) -> list[E]:
    assert isinstance(deps.publisher, RecordingPublisher)
    return [e for e in deps.publisher.events if isinstance(e, kind)]


async def _link(deps: RegistryDeps, link_id: str = "l1", address: str = ADDRESS) -> str:
    await handlers.when_link_requested_reserve(requested_event(ALICE, link_id, address), deps)
    await handlers.when_mailbox_verified_link(verified_event(ALICE, link_id, address), deps)
    [linked] = [e for e in _of(deps, MailboxLinked) if e.data.link_id == link_id]
    return linked.data.mailbox_id


async def _mailbox(deps: RegistryDeps) -> MailboxDetails:
    [record] = await handlers.list_mailboxes(ALICE, deps)
    assert record.mailbox is not None
    return record.mailbox


async def _due_check(deps: RegistryDeps, clock: FakeClock) -> MailboxCheckRequested:
    """Moves the clock to the next due check and runs a scheduler pass: its one request."""
    [due] = deps.store.health.values()  # type: ignore[attr-defined]
    clock.now = max(clock.now, due.next_check_at)
    before = len(_of(deps, MailboxCheckRequested))
    assert await health.request_due_checks(deps) == 1
    return _of(deps, MailboxCheckRequested)[before]


def _result(asked: MailboxCheckRequested, failure: Failure | None) -> MailboxChecked:
    data = MailboxCheckedData(
        check_id=asked.data.check_id,
        mailbox_id=asked.data.mailbox_id,
        link_id=asked.data.link_id,
        owner=asked.data.owner,
        address=asked.data.address,
        provider=asked.data.provider,
        failure=failure,
    )
    return MailboxChecked(correlation_id=asked.correlation_id, producer="imap-verifier", data=data)


async def _check(deps: RegistryDeps, clock: FakeClock, failure: Failure | None) -> None:
    await handlers.when_mailbox_checked_apply(_result(await _due_check(deps, clock), failure), deps)


def _changes(deps: RegistryDeps) -> list[tuple[MailboxHealth, MailboxHealth]]:
    return [(e.data.previous_health, e.data.health) for e in _of(deps, MailboxHealthChanged)]


# --- the rules --------------------------------------------------------------------------------


def test_retries_double_up_to_the_interval_and_jitter_stays_in_its_band() -> None:
    policy = HealthPolicy(interval=timedelta(minutes=10), retry=timedelta(minutes=1), jitter=0.2)
    assert [policy.retry_delay(n).total_seconds() for n in (1, 2, 3, 4, 5, 40)] == [
        60,
        120,
        240,
        480,
        600,
        600,
    ]
    assert policy.regular_delay(-1.0) == timedelta(minutes=8)
    assert policy.regular_delay(1.0) == timedelta(minutes=12)
    assert policy.regular_delay(9.0) == timedelta(minutes=12)


def test_check_ids_name_their_mailbox_and_number() -> None:
    assert parse_check_id("0f3a-12") == ("0f3a", 12)
    assert parse_check_id("0f3a") is None
    assert parse_check_id("0f3a-x") is None


@pytest.mark.parametrize("failures", range(1, 8))
def test_failures_other_than_refused_credentials_never_make_a_mailbox_reconnect_required(
    failures: int,
) -> None:
    record = HealthRecord("m", "l", next_check_at=FakeClock()())
    state, code = MailboxHealth.ACTIVE, None
    for _ in range(failures):
        verdict = judge_check(state, code, UNREACHABLE, record, POLICY, 0.0)
        record = HealthRecord("m", "l", FakeClock()(), back_off=verdict.back_off)
        state, code = verdict.health, verdict.code
    assert state is MailboxHealth.DEGRADED
    assert verdict.back_off == failures
    assert verdict.wait == POLICY.retry_delay(failures)


def test_an_unreachable_server_does_not_clear_reconnect_required() -> None:
    record = HealthRecord("m", "l", next_check_at=FakeClock()())
    verdict = judge_check(
        MailboxHealth.RECONNECT_REQUIRED,
        FailureCode.IMAP_AUTH_FAILED,
        UNREACHABLE,
        record,
        POLICY,
        0.0,
    )
    assert verdict.health is MailboxHealth.RECONNECT_REQUIRED
    assert verdict.code is FailureCode.IMAP_AUTH_FAILED


def test_decisions_stored_before_health_existed_read_as_active() -> None:
    document = registry_store._mailbox_document(
        MailboxDetails(
            mailbox_id="m",
            imap=request_data(ALICE, "l", ADDRESS).imap,
            smtp=request_data(ALICE, "l", ADDRESS).smtp,
            linked_at=FakeClock()(),
        )
    )
    del document["degraded"]
    assert registry_store._mailbox(document).health is MailboxHealth.ACTIVE
    document["degraded"] = "imap_unreachable"
    assert registry_store._mailbox(document).health is MailboxHealth.DEGRADED


# --- the schedule -----------------------------------------------------------------------------


async def test_a_linked_mailbox_is_checked_an_interval_later_with_its_sealed_credentials(
    deps: RegistryDeps, clock: FakeClock, store: InMemoryRegistryStore
) -> None:
    mailbox_id = await _link(deps)
    assert store.health[mailbox_id].next_check_at == clock() + INTERVAL
    assert await health.request_due_checks(deps) == 0  # not due yet
    asked = await _due_check(deps, clock)
    assert asked.data.check_id == f"{mailbox_id}-1"
    assert asked.data.reason is CheckReason.SCHEDULED
    assert asked.data.link_id == "l1"
    assert asked.data.address == ADDRESS
    assert asked.data.credentials == store.verifications["l1"].credentials
    assert asked.partition_key() == ADDRESS.encode()
    # In flight: not asked again until it times out, then the next check is.
    assert await health.request_due_checks(deps) == 0
    clock.advance(POLICY.check_timeout + timedelta(seconds=1))
    assert await health.request_due_checks(deps) == 1
    assert _of(deps, MailboxCheckRequested)[-1].data.check_id == f"{mailbox_id}-2"


async def test_a_pass_requests_at_most_a_batch_the_longest_due_first(
    store: InMemoryRegistryStore, clock: FakeClock
) -> None:
    deps = RegistryDeps(
        store,
        RecordingPublisher(),
        PlanTable(DEFAULT_PLANS, "organization"),
        clock=clock,
        health=HealthPolicy(interval=INTERVAL, jitter=0.0, batch=2),
    )
    for n in range(3):
        await _link(deps, f"l{n}", f"box{n}@example.org")
        clock.advance(timedelta(minutes=1))
    clock.advance(INTERVAL)
    assert await health.request_due_checks(deps) == 2
    assert [e.data.link_id for e in _of(deps, MailboxCheckRequested)] == ["l0", "l1"]
    assert await health.request_due_checks(deps) == 1


async def test_scheduled_checks_are_off_at_interval_zero(
    store: InMemoryRegistryStore, clock: FakeClock
) -> None:
    deps = RegistryDeps(
        store,
        RecordingPublisher(),
        PlanTable(DEFAULT_PLANS, "basic"),
        clock=clock,
        health=HealthPolicy(interval=timedelta(0)),
    )
    await _link(deps)
    clock.advance(timedelta(days=30))
    assert await health.request_due_checks(deps) == 0


async def test_mailboxes_linked_before_health_checks_existed_get_a_schedule(
    deps: RegistryDeps, clock: FakeClock, store: InMemoryRegistryStore
) -> None:
    mailbox_id = await _link(deps)
    store.health.clear()
    assert await health.track_linked_before(deps) == 1
    assert clock() <= store.health[mailbox_id].next_check_at <= clock() + INTERVAL
    assert await health.track_linked_before(deps) == 0


async def test_an_unlinked_mailbox_is_no_longer_checked_and_its_results_are_ignored(
    deps: RegistryDeps, clock: FakeClock, store: InMemoryRegistryStore
) -> None:
    mailbox_id = await _link(deps)
    asked = await _due_check(deps, clock)
    result = await handlers.unlink_mailbox_by_id(mailbox_id, deps, ALICE)
    assert result is UnlinkResult.UNLINKED
    assert store.health == {}
    assert store.checks == {}
    assert await health.apply_result(_result(asked, None), deps) is CheckOutcome.IGNORED


# --- results ----------------------------------------------------------------------------------


async def test_a_success_notes_the_check_and_changes_nothing(
    deps: RegistryDeps, clock: FakeClock, store: InMemoryRegistryStore
) -> None:
    mailbox_id = await _link(deps)
    await _check(deps, clock, None)
    assert (await _mailbox(deps)).health is MailboxHealth.ACTIVE
    assert _changes(deps) == []
    noted = store.health[mailbox_id]
    assert noted.applied == 1
    assert noted.last_checked_at is not None
    assert noted.next_check_at == clock() + INTERVAL


async def test_two_refusals_in_a_row_make_it_reconnect_required_once(
    deps: RegistryDeps, clock: FakeClock
) -> None:
    await _link(deps)
    await _check(deps, clock, REFUSED)
    assert (await _mailbox(deps)).health is MailboxHealth.ACTIVE  # one may be a fluke
    asked = await _due_check(deps, clock)
    assert clock() - asked.data.requested_at < timedelta(seconds=1)
    await handlers.when_mailbox_checked_apply(_result(asked, REFUSED), deps)
    mailbox = await _mailbox(deps)
    assert mailbox.health is MailboxHealth.RECONNECT_REQUIRED
    assert mailbox.reconnect_required is FailureCode.IMAP_AUTH_FAILED
    [changed] = _of(deps, MailboxHealthChanged)
    assert changed.data.health is MailboxHealth.RECONNECT_REQUIRED
    assert changed.data.previous_health is MailboxHealth.ACTIVE
    assert changed.data.failure is not None
    assert changed.data.failure.code is FailureCode.IMAP_AUTH_FAILED
    assert changed.data.link_id == "l1"
    # Redelivered: nothing more.
    await handlers.when_mailbox_checked_apply(_result(asked, REFUSED), deps)
    assert len(_of(deps, MailboxHealthChanged)) == 1


async def test_a_refusal_between_successes_does_not_count_towards_the_limit(
    deps: RegistryDeps, clock: FakeClock
) -> None:
    await _link(deps)
    for failure in (REFUSED, None, REFUSED, None, REFUSED):
        await _check(deps, clock, failure)
    assert (await _mailbox(deps)).health is MailboxHealth.ACTIVE
    assert _changes(deps) == []


async def test_unreachable_servers_make_it_degraded_with_back_off_then_active_again(
    deps: RegistryDeps, clock: FakeClock, store: InMemoryRegistryStore
) -> None:
    mailbox_id = await _link(deps)
    waits = []
    for _ in range(4):
        await _check(deps, clock, UNREACHABLE)
        waits.append(store.health[mailbox_id].next_check_at - clock())
    assert waits == [timedelta(seconds=s) for s in (60, 120, 240, 480)]
    mailbox = await _mailbox(deps)
    assert mailbox.health is MailboxHealth.DEGRADED
    assert mailbox.degraded is FailureCode.IMAP_UNREACHABLE
    await _check(deps, clock, None)
    assert (await _mailbox(deps)).health is MailboxHealth.ACTIVE
    assert _changes(deps) == [
        (MailboxHealth.ACTIVE, MailboxHealth.DEGRADED),
        (MailboxHealth.DEGRADED, MailboxHealth.ACTIVE),
    ]
    [_, back] = _of(deps, MailboxHealthChanged)
    assert back.data.failure is None


async def test_a_success_after_reconnect_required_makes_it_active(
    deps: RegistryDeps, clock: FakeClock
) -> None:
    await _link(deps)
    await _check(deps, clock, REFUSED)
    await _check(deps, clock, REFUSED)
    await _check(deps, clock, UNREACHABLE)
    assert (await _mailbox(deps)).health is MailboxHealth.RECONNECT_REQUIRED
    await _check(deps, clock, None)
    assert (await _mailbox(deps)).health is MailboxHealth.ACTIVE
    assert _changes(deps)[-1] == (MailboxHealth.RECONNECT_REQUIRED, MailboxHealth.ACTIVE)


async def test_results_of_unknown_and_superseded_checks_are_ignored(
    deps: RegistryDeps, clock: FakeClock
) -> None:
    mailbox_id = await _link(deps)
    first = await _due_check(deps, clock)
    clock.advance(POLICY.check_timeout + timedelta(seconds=1))
    second = await _due_check(deps, clock)
    assert await health.apply_result(_result(second, UNREACHABLE), deps) is CheckOutcome.FAILED
    # The first answered late: older than the latest applied.
    assert await health.apply_result(_result(first, None), deps) is CheckOutcome.IGNORED
    unknown = second.model_copy(
        update={"data": second.data.model_copy(update={"check_id": f"{mailbox_id}-9"})}
    )
    assert await health.apply_result(_result(unknown, None), deps) is CheckOutcome.IGNORED
    other = second.model_copy(
        update={"data": second.data.model_copy(update={"check_id": "nobody-1"})}
    )
    assert await health.apply_result(_result(other, None), deps) is CheckOutcome.IGNORED
    assert (await _mailbox(deps)).health is MailboxHealth.DEGRADED


# --- the broker's flag and reconnects ---------------------------------------------------------


def _flag(mailbox_id: str) -> MailboxReconnectRequired:
    data = MailboxReconnectRequiredData(
        mailbox_id=mailbox_id,
        link_id="l1",
        owner=ALICE,
        address=ADDRESS,
        provider=ProviderType.IMAP,
        failure=Failure.of(FailureCode.RECONNECT_REQUIRED, "refresh refused"),
    )
    return MailboxReconnectRequired(correlation_id="flag", producer="oauth-broker", data=data)


async def test_the_brokers_flag_announces_reconnect_required_once_and_a_reconnect_active(
    deps: RegistryDeps, clock: FakeClock
) -> None:
    mailbox_id = await _link(deps)
    await handlers.when_reconnect_required_flag_mailbox(_flag(mailbox_id), deps)
    await handlers.when_reconnect_required_flag_mailbox(_flag(mailbox_id), deps)  # redelivered
    [flagged] = _of(deps, MailboxHealthChanged)
    assert flagged.data.health is MailboxHealth.RECONNECT_REQUIRED
    assert flagged.data.failure is not None
    assert flagged.data.failure.code is FailureCode.RECONNECT_REQUIRED
    data = request_data(ALICE, "r1", ADDRESS).model_copy(update={"reconnect": True})
    await handlers.when_link_requested_reserve(
        LinkRequested(correlation_id="r1", producer="link-api", data=data), deps
    )
    await handlers.when_mailbox_verified_link(verified_event(ALICE, "r1", ADDRESS), deps)
    [reconnected] = _of(deps, MailboxReconnected)
    assert reconnected.data.mailbox_id == mailbox_id
    assert _changes(deps) == [
        (MailboxHealth.ACTIVE, MailboxHealth.RECONNECT_REQUIRED),
        (MailboxHealth.RECONNECT_REQUIRED, MailboxHealth.ACTIVE),
    ]
    # Checks use the reconnect's credentials from now on.
    asked = await _due_check(deps, clock)
    assert asked.data.credentials == deps.store.verifications["r1"].credentials  # type: ignore[attr-defined]


async def test_a_reconnect_of_an_active_mailbox_announces_no_health_change(
    deps: RegistryDeps,
) -> None:
    await _link(deps)
    data = request_data(ALICE, "r1", ADDRESS).model_copy(update={"reconnect": True})
    await handlers.when_link_requested_reserve(
        LinkRequested(correlation_id="r1", producer="link-api", data=data), deps
    )
    await handlers.when_mailbox_verified_link(verified_event(ALICE, "r1", ADDRESS), deps)
    assert len(_of(deps, MailboxReconnected)) == 1
    assert _changes(deps) == []


# --- HTTP: listing and on-demand checks -------------------------------------------------------

TOKENS = {n: f"{n}-token-".ljust(32, "x") for n in ("service", "sign-in", "link-api")}
SCOPES = {
    "service": [Scope.MAILBOX_ACCESS],
    "sign-in": [Scope.OWNER_LOOKUP],
    "link-api": [Scope.REGISTRY],
}


def _client(deps: RegistryDeps, accounts: dict[str, list[str]] | None = None) -> httpx.AsyncClient:
    keys = CallerKeys(
        caller_keys({n: SecretStr(t) for n, t in TOKENS.items()}, SCOPES, accounts or {})
    )
    app = build_http_app(
        title="registry", router=build_router(deps, keys), keys=keys, on_start=[], on_stop=[]
    )
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://r")


def _as(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[name]}"}


async def test_the_listing_shows_status_last_check_and_reason(
    deps: RegistryDeps, clock: FakeClock
) -> None:
    await _link(deps)
    async with _client(deps) as client:
        path = "/v1/accounts/acme/users/alice/mailboxes"
        [fresh] = (await client.get(path, headers=_as("link-api"))).json()["mailboxes"]
        assert fresh["status"] == "active"
        assert fresh["last_checked_at"] is None
        assert fresh["status_reason"] is None
        await _check(deps, clock, UNREACHABLE)
        [degraded] = (await client.get(path, headers=_as("link-api"))).json()["mailboxes"]
    assert degraded["status"] == "degraded"
    assert degraded["last_checked_at"] is not None
    reason = degraded["status_reason"]
    assert reason["code"] == "imap_unreachable"
    assert set(reason) == {"code", "message", "remediation"}


async def test_an_on_demand_check_is_requested_once_while_in_flight_and_rate_limited(
    deps: RegistryDeps, clock: FakeClock
) -> None:
    mailbox_id = await _link(deps)
    path = f"/v1/accounts/acme/mailboxes/{mailbox_id}/checks"
    async with _client(deps) as client:
        first = await client.post(path, headers=_as("service"))
        assert first.status_code == 202, first.text
        assert first.json()["check_id"] == f"{mailbox_id}-1"
        assert first.json()["new"] is True
        again = await client.post(path, headers=_as("link-api"))
        assert again.status_code == 202
        assert again.json()["check_id"] == f"{mailbox_id}-1"
        assert again.json()["new"] is False
        [asked] = _of(deps, MailboxCheckRequested)
        assert asked.data.reason is CheckReason.ON_DEMAND
        # Answered, then asked again: a new check each time, until the budget is spent.
        await handlers.when_mailbox_checked_apply(_result(asked, None), deps)
        for n in (2, 3):
            answer = await client.post(path, headers=_as("service"))
            assert answer.json()["check_id"] == f"{mailbox_id}-{n}"
            await handlers.when_mailbox_checked_apply(
                _result(_of(deps, MailboxCheckRequested)[-1], None), deps
            )
        over = await client.post(path, headers=_as("service"))
        assert over.status_code == 429, over.text
        assert int(over.headers["Retry-After"]) > 0
        assert len(_of(deps, MailboxCheckRequested)) == 3


async def test_an_on_demand_check_of_an_unknown_or_foreign_mailbox_is_not_found(
    deps: RegistryDeps,
) -> None:
    mailbox_id = await _link(deps)
    async with _client(deps, {"service": ["other"]}) as client:
        foreign = await client.post(
            f"/v1/accounts/other/mailboxes/{mailbox_id}/checks", headers=_as("service")
        )
        unknown = await client.post(
            "/v1/accounts/acme/mailboxes/0123abcd/checks", headers=_as("link-api")
        )
        bound = await client.post(
            f"/v1/accounts/acme/mailboxes/{mailbox_id}/checks", headers=_as("service")
        )
        refused = await client.post(
            f"/v1/accounts/acme/mailboxes/{mailbox_id}/checks", headers=_as("sign-in")
        )
    assert foreign.status_code == 404
    assert foreign.json()["error"] == "mailbox_not_found"
    assert unknown.status_code == 404
    assert unknown.json()["error"] == "mailbox_not_found"
    assert bound.status_code == 404  # a key bound to another account
    assert refused.status_code == 403
    assert _of(deps, MailboxCheckRequested) == []


async def test_a_result_applied_by_many_at_once_decides_one_change(clock: FakeClock) -> None:
    # Interleaved round trips and half the hint writes lost, as on a store without isolation.
    store = InMemoryRegistryStore(clock, hint_loss=0.5, interleave=True, seed=7)
    deps = RegistryDeps(
        store, RecordingPublisher(), PlanTable(DEFAULT_PLANS, "basic"), clock=clock, health=POLICY
    )
    await _link(deps)
    [due] = store.health.values()
    clock.now = due.next_check_at
    while not _of(deps, MailboxCheckRequested):  # the hint of the request may be lost
        await health.request_due_checks(deps)
    [asked] = _of(deps, MailboxCheckRequested)
    result = _result(asked, UNREACHABLE)
    await asyncio.gather(*(handlers.when_mailbox_checked_apply(result, deps) for _ in range(10)))
    assert {e.event_id for e in _of(deps, MailboxHealthChanged)} == {
        _of(deps, MailboxHealthChanged)[0].event_id
    }
    assert (await _mailbox(deps)).health is MailboxHealth.DEGRADED


async def test_a_check_whose_request_was_not_published_is_not_in_flight(
    store: InMemoryRegistryStore, clock: FakeClock
) -> None:
    publisher = FailingOncePublisher("MailboxCheckRequested")
    deps = RegistryDeps(
        store, publisher, PlanTable(DEFAULT_PLANS, "basic"), clock=clock, health=POLICY
    )
    mailbox_id = await _link(deps)
    clock.advance(INTERVAL)
    with pytest.raises(ConnectionError):
        await health.request_due_checks(deps)
    assert store.checks == {}
    clock.advance(POLICY.retry)  # retried soon, not after the check's timeout
    assert await health.request_due_checks(deps) == 1
    [asked] = _of(deps, MailboxCheckRequested)
    assert asked.data.check_id == f"{mailbox_id}-2"  # its number is not used again
    await handlers.when_mailbox_checked_apply(_result(asked, None), deps)
    assert store.health[mailbox_id].applied == 2


async def test_a_reconnect_starts_the_count_of_refusals_again(
    deps: RegistryDeps, clock: FakeClock
) -> None:
    await _link(deps)
    await _check(deps, clock, REFUSED)
    data = request_data(ALICE, "r1", ADDRESS).model_copy(update={"reconnect": True})
    await handlers.when_link_requested_reserve(
        LinkRequested(correlation_id="r1", producer="link-api", data=data), deps
    )
    await handlers.when_mailbox_verified_link(verified_event(ALICE, "r1", ADDRESS), deps)
    await _check(deps, clock, REFUSED)
    assert (await _mailbox(deps)).health is MailboxHealth.ACTIVE  # the first of the new ones
    await _check(deps, clock, REFUSED)
    assert (await _mailbox(deps)).health is MailboxHealth.RECONNECT_REQUIRED
