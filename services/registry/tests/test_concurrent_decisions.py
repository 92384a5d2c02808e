"""The registry's guarantees when every request runs at once and interleaves its round trips,
and when any share of the hint writes is lost (as on a store without isolation)."""

import asyncio
import random
from collections import defaultdict
from datetime import timedelta

import pytest

from mailbox_link_contract.events import (
    Envelope,
    LinkRejected,
    MailboxLinked,
    MailboxOwner,
    UnlinkedBy,
)
from mailbox_link_contract.failures import FailureCode
from mailbox_link_shared.publishing import RecordingPublisher
from mailbox_link_shared.routing import EventRouter
from registry import handlers
from registry.domain.plans import DEFAULT_PLANS, PlanTable
from registry.handlers import RegistryDeps
from registry_fakes import FakeClock, InMemoryRegistryStore
from registry_fakes import failed_event as _failed
from registry_fakes import plan_changed_event as _plan_changed
from registry_fakes import requested_event as _requested
from registry_fakes import verified_event as _verified

PLANS = PlanTable(DEFAULT_PLANS, "basic")
HINT_LOSSES = [0.0, 0.5, 1.0]


def _deps(hint_loss: float, seed: int) -> RegistryDeps:
    clock = FakeClock()
    store = InMemoryRegistryStore(clock, hint_loss=hint_loss, interleave=True, seed=seed)
    return RegistryDeps(store, RecordingPublisher(), PLANS, timedelta(minutes=15), clock)


async def _all_at_once(events: list[Envelope], deps: RegistryDeps, seed: int) -> None:
    random.Random(seed).shuffle(events)
    router = EventRouter(handlers.EVENT_HANDLERS, deps)
    await asyncio.gather(*(router.handle(e) for e in events))


def _finals(deps: RegistryDeps) -> dict[str, set[Envelope]]:
    """Each link's final answers, by event id (a lost hint may repeat one, never add one)."""
    assert isinstance(deps.publisher, RecordingPublisher)
    finals: dict[str, dict[str, Envelope]] = defaultdict(dict)
    for event in deps.publisher.events:
        if isinstance(event, MailboxLinked | LinkRejected):
            finals[event.correlation_id][str(event.event_id)] = event
    return {link_id: set(by_id.values()) for link_id, by_id in finals.items()}


@pytest.mark.parametrize("hint_loss", HINT_LOSSES)
async def test_one_of_three_hundred_concurrent_requests_for_an_address_links_it(
    hint_loss: float,
) -> None:
    deps = _deps(hint_loss, seed=1)
    owners = [
        MailboxOwner(account_id=f"a{a}", user_id=f"u{u}") for a in range(30) for u in range(10)
    ]
    requests = [
        _requested(owner, f"l{n}", "contested@example.org") for n, owner in enumerate(owners)
    ]
    verifications = [_verified(r.data.owner, r.data.link_id, r.data.address) for r in requests]
    await _all_at_once([*requests, *verifications], deps, seed=1)

    finals = _finals(deps)
    assert set(finals) == {r.data.link_id for r in requests}
    assert all(len(answers) == 1 for answers in finals.values())  # one decision each
    answers = [next(iter(a)) for a in finals.values()]
    linked = [a for a in answers if isinstance(a, MailboxLinked)]
    assert len(linked) == 1
    codes = {a.data.failure.code for a in answers if isinstance(a, LinkRejected)}
    assert codes == {FailureCode.ALREADY_LINKED_ELSEWHERE}
    owner = await handlers.find_owner("contested@example.org", deps)
    assert owner is not None
    assert owner.link_id == linked[0].correlation_id


@pytest.mark.parametrize("hint_loss", HINT_LOSSES)
async def test_exactly_fifteen_of_a_hundred_concurrent_requests_link_on_a_fifteen_plan(
    hint_loss: float,
) -> None:
    deps = _deps(hint_loss, seed=2)
    user = MailboxOwner(account_id="big", user_id="one")
    await handlers.assign_plan(user, "organization", deps)
    requests = [_requested(user, f"l{n}", f"box{n}@example.org") for n in range(100)]
    verifications = [_verified(user, r.data.link_id, r.data.address) for r in requests]
    await _all_at_once([*requests, *verifications], deps, seed=2)

    finals = _finals(deps)
    answers = [next(iter(a)) for a in finals.values()]
    assert all(len(a) == 1 for a in finals.values())
    assert sum(isinstance(a, MailboxLinked) for a in answers) == 15
    refused = [a for a in answers if isinstance(a, LinkRejected)]
    assert {a.data.failure.code for a in refused} == {FailureCode.PLAN_LIMIT_REACHED}
    assert len(await handlers.list_mailboxes(user, deps)) == 15
    assert (await handlers.get_plan(user, deps)).used == 15


@pytest.mark.parametrize("hint_loss", HINT_LOSSES)
async def test_a_churn_of_links_failures_and_unlinks_keeps_every_guarantee(
    hint_loss: float,
) -> None:
    deps = _deps(hint_loss, seed=3)
    users = [MailboxOwner(account_id=f"a{n % 3}", user_id=f"u{n}") for n in range(6)]
    addresses = [f"m{n}@example.org" for n in range(5)]
    rng = random.Random(3)
    for round_ in range(4):
        events: list[Envelope] = []
        for n in range(30):
            user, address = rng.choice(users), rng.choice(addresses)
            link_id = f"r{round_}-{n}"
            events.append(_requested(user, link_id, address))
            outcome = _failed if rng.random() < 0.3 else _verified
            events.append(outcome(user, link_id, address))
        unlinks = [
            handlers.unlink_mailbox(a, deps, rng.choice([*users, None]), UnlinkedBy.USER)
            for a in rng.sample(addresses, 2)
        ]
        router = EventRouter(handlers.EVENT_HANDLERS, deps)
        rng.shuffle(events)
        await asyncio.gather(*(router.handle(e) for e in events), *unlinks)

        finals = _finals(deps)
        assert all(len(a) == 1 for a in finals.values())
        holders = {a: await handlers.find_owner(a, deps) for a in addresses}
        linked_by_user: dict[MailboxOwner, int] = defaultdict(int)
        for holder in holders.values():
            if holder is not None:
                linked_by_user[holder.owner] += 1
        for user in users:
            listed = await handlers.list_mailboxes(user, deps)
            assert len(listed) == linked_by_user[user]
            assert len(listed) <= PLANS.limit_for(None)
            for record in listed:
                assert holders[record.address] is not None
                assert holders[record.address].link_id == record.link_id  # type: ignore[union-attr]


@pytest.mark.parametrize("hint_loss", HINT_LOSSES)
async def test_of_plan_changes_applied_at_once_the_newest_stands(hint_loss: float) -> None:
    deps = _deps(hint_loss, seed=4)
    user = MailboxOwner(account_id="acme", user_id="planner")
    clock = FakeClock()
    changes = []
    for n in range(30):
        changes.append(_plan_changed(user, ["free", "basic", "professional"][n % 3], clock))
        clock.advance(timedelta(seconds=1))
    await _all_at_once(list(changes), deps, seed=4)
    usage = await handlers.get_plan(user, deps)
    assert usage.plan == changes[-1].data.plan


@pytest.mark.parametrize("hint_loss", HINT_LOSSES)
async def test_of_fifty_concurrent_requests_of_one_user_for_one_mailbox_one_proceeds(
    hint_loss: float,
) -> None:
    # No address is claimed before verification: the user's own hold decides this race.
    deps = _deps(hint_loss, seed=3)
    owner = MailboxOwner(account_id="acme", user_id="alice")
    requests = [_requested(owner, f"l{n}", "Mine+tag@example.org") for n in range(50)]
    verifications = [_verified(owner, r.data.link_id, r.data.address) for r in requests]
    await _all_at_once([*requests, *verifications], deps, seed=3)

    finals = _finals(deps)
    assert set(finals) == {r.data.link_id for r in requests}
    assert all(len(answers) == 1 for answers in finals.values())
    answers = [next(iter(a)) for a in finals.values()]
    linked = [a for a in answers if isinstance(a, MailboxLinked)]
    assert len(linked) == 1
    codes = {a.data.failure.code for a in answers if isinstance(a, LinkRejected)}
    assert codes <= {FailureCode.LINK_IN_PROGRESS, FailureCode.ALREADY_LINKED}
    assert (await handlers.get_plan(owner, deps)).used == 1
