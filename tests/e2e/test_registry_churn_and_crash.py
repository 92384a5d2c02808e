"""Guarantees 1-4 after a mixed, concurrent churn, and after the registry is killed (SIGKILL)
at random points while hundreds of links are in flight."""

import asyncio
import random
from collections import defaultdict
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx

from localinfra.registry_driver import (
    EventSender,
    MailboxesTopic,
    link_requested,
    owner,
    plan_changed,
    redelivered,
    registry_documents,
    verification_failed,
    verified,
)
from localinfra.services import RunningServices
from localinfra.stack import Endpoints
from mailbox_link_contract.events import (
    LinkRejected,
    LinkRequested,
    MailboxLinked,
    MailboxOwner,
    utc_now,
)
from mailbox_link_contract.topics import Topics

from ..example_consumer.linked_mailboxes import build_view
from .registry_checks import assert_registry_consistent
from .test_registry_guarantees import start_registry

PLAN_LIMITS = {"free": 1, "basic": 3, "professional": 5}
# The churn runs until it has made this many link requests (a count, not a time: a busy
# machine makes fewer per second).
CHURN_LINK_REQUESTS = 240
KILLS = 4


class Churn:
    """Random link requests, answers, duplicates, unlinks and plan changes, concurrently."""

    def __init__(self, sender: EventSender, api: httpx.AsyncClient, rng: random.Random) -> None:
        self.sender = sender
        self.api = api
        self.rng = rng
        self.users = [owner(a, f"{a}-{u}") for a in range(3) for u in range(2)]
        self.addresses = [f"box{i}@churn.example.org" for i in range(10)]
        self.requests: list[LinkRequested] = []
        self.plans: dict[MailboxOwner, list[tuple[Any, str]]] = defaultdict(list)

    async def run(self, workers: int, link_requests: int) -> None:
        await asyncio.gather(*(self._work(link_requests) for _ in range(workers)))

    async def _work(self, link_requests: int) -> None:
        while len(self.requests) < link_requests:
            roll = self.rng.random()
            if roll < 0.55:
                await self._link()
            elif roll < 0.75:
                await self._unlink()
            elif roll < 0.8:
                await self._force_unlink()
            else:
                await self._change_plan()
            await asyncio.sleep(self.rng.uniform(0, 0.05))

    async def _link(self) -> None:
        request = link_requested(self.rng.choice(self.users), self.rng.choice(self.addresses))
        self.requests.append(request)
        await self._send_maybe_twice(request)
        answer = self.rng.random()
        if answer < 0.15:
            return  # the verifier never answers: the reservation must expire
        await asyncio.sleep(self.rng.uniform(0, 0.3))
        result = verified(request) if answer < 0.85 else verification_failed(request)
        await self._send_maybe_twice(result)

    async def _send_maybe_twice(self, event: Any) -> None:
        events = [event]
        if self.rng.random() < 0.2:
            events.append(event)  # the same record again
        if self.rng.random() < 0.2:
            events.append(redelivered(event))  # the same event under a new id
        await self.sender.send(events)

    async def _unlink(self) -> None:
        user, address = self.rng.choice(self.users), self.rng.choice(self.addresses)
        path = f"/v1/accounts/{user.account_id}/users/{user.user_id}/mailboxes/{address}"
        response = await self.api.delete(path)
        assert response.status_code in (204, 404, 409), response.text

    async def _force_unlink(self) -> None:
        response = await self.api.delete(f"/v1/mailboxes/{self.rng.choice(self.addresses)}")
        assert response.status_code in (204, 404, 409), response.text

    async def _change_plan(self) -> None:
        user = self.rng.choice(self.users)
        plan = self.rng.choice(sorted(PLAN_LIMITS))
        # Billing's events may arrive out of order: the newest change must win. Times are
        # distinct milliseconds, the precision the registry orders them by.
        changed_at = utc_now() - timedelta(milliseconds=self.rng.randint(0, 2000))
        while changed_at in {at for at, _ in self.plans[user]}:
            changed_at += timedelta(milliseconds=1)
        self.plans[user].append((changed_at, plan))
        await self.sender.send([plan_changed(user, plan, changed_at)])


async def test_guarantees_hold_after_a_churn_of_links_unlinks_plan_changes_and_duplicates(
    infra: Endpoints, workdir: Path
) -> None:
    namespace = "e2e-registry-churn"
    running = start_registry(
        infra, workdir, namespace, MBL_RESERVATION_TTL_SECONDS="3", MBL_PLANS=_plans_json()
    )
    try:
        async with (
            MailboxesTopic(infra.kafka_bootstrap, namespace) as topic,
            EventSender(infra.kafka_bootstrap, namespace) as sender,
            httpx.AsyncClient(base_url=running.registry_url, headers=_auth(running)) as api,
        ):
            churn = Churn(sender, api, random.Random(20261126))
            await churn.run(workers=8, link_requests=CHURN_LINK_REQUESTS)
            link_ids = [r.data.link_id for r in churn.requests]
            await topic.wait_for_finals(link_ids)
            # Plan changes travel on their own topic: give the last ones time to arrive.
            newest = {user: max(changes)[1] for user, changes in churn.plans.items()}
            plans = await _plans_once_settled(api, newest)

        assert len(link_ids) >= CHURN_LINK_REQUESTS
        await _assert_guarantees(infra, namespace, topic, link_ids)
        for user, plan in newest.items():
            assert plans[user] == plan, f"{user}: an older plan change won"
        finals = topic.final_events()
        outcomes = {type(finals[i]).__name__ for i in link_ids}
        assert outcomes == {"MailboxLinked", "LinkRejected"}
        codes = {e.data.failure.code for e in finals.values() if isinstance(e, LinkRejected)}
        # The churn reached every way a link can end.
        assert {"already_linked_elsewhere", "plan_limit_reached", "reservation_expired",
                "imap_auth_failed"} <= codes  # fmt: skip
    finally:
        running.stop()


async def test_every_link_ends_once_when_the_registry_is_killed_mid_flight(
    infra: Endpoints, workdir: Path
) -> None:
    namespace = "e2e-registry-crash"
    rng = random.Random(4242)
    users = [owner(f"c{a}", f"{a}-{u}") for a in range(20) for u in range(5)]
    addresses = [f"m{i}@crash.example.org" for i in range(300)]
    requests = [link_requested(u, a) for u in users for a in rng.sample(addresses, 5)]
    answers = [verified(r) if rng.random() < 0.9 else verification_failed(r) for r in requests]
    events: list[Any] = [*requests, *answers]
    rng.shuffle(events)
    # Two replicas share the work; each kill takes one down mid-flight and a new one joins.
    replicas = [start_registry(infra, workdir, namespace, MBL_RESERVATION_TTL_SECONDS="120")]
    kills = 0
    try:
        async with MailboxesTopic(infra.kafka_bootstrap, namespace) as topic:
            async with EventSender(infra.kafka_bootstrap, namespace) as sender:
                await sender.send(events)
            for _ in range(KILLS):
                # Kill while it works: after it has announced a random number of decisions.
                await _wait_for_progress(topic, rng.randint(5, 60))
                alive = [p for r in replicas for p in r.processes if p.is_alive()]
                rng.choice(alive).kill()
                kills += 1
                replicas.append(
                    start_registry(
                        infra, workdir, namespace, replicas=1, MBL_RESERVATION_TTL_SECONDS="120"
                    )
                )
            await topic.wait_for_finals([r.data.link_id for r in requests], stall=60)
        assert kills == KILLS
        assert len(requests) == 500
        await _assert_guarantees(infra, namespace, topic, [r.data.link_id for r in requests])
    finally:
        for running in replicas:
            running.stop()


async def _assert_guarantees(
    infra: Endpoints, namespace: str, topic: MailboxesTopic, link_ids: list[str]
) -> None:
    # A crash can stop a decision after it is stored but before it is announced; the next
    # look at the link, or housekeeping (every second here), announces it. The checks below
    # are exact, so they wait until nothing is left pending.
    deadline = asyncio.get_running_loop().time() + 15
    while pending := (await registry_documents(infra.mongodb_uri, namespace))["pending"]:
        assert asyncio.get_running_loop().time() < deadline, f"left pending: {pending}"
        await asyncio.sleep(0.5)
    # 3 and 4: one final answer per link, however often its events were delivered.
    finals = topic.finals()
    assert all(len(finals[i]) == 1 for i in link_ids), "a link has two different final answers"
    documents = await registry_documents(infra.mongodb_uri, namespace)
    states = {d["_id"]: d["state"] for d in documents["links"]}
    assert not [i for i in link_ids if states[i] in ("reserving", "reserved")], "left hanging"
    for link_id, event in topic.final_events().items():
        expected = ("linked", "unlinked") if isinstance(event, MailboxLinked) else ("rejected",)
        assert states[link_id] in expected, f"{link_id}: record says {states[link_id]}"
    # 1 and 2, on the registry's documents and as an outside consumer sees the topic.
    assert_registry_consistent(documents)
    view = await build_view(infra.kafka_bootstrap, Topics.for_namespace(namespace).mailboxes)
    assert view.conflicts == [], "a mailbox was linked while linked to someone else"
    linked = {d["address"]: (d["account_id"], d["user_id"]) for d in documents["links"]
              if d["state"] == "linked"}  # fmt: skip
    assert {a: (o.account_id, o.user_id) for a, o in view.owners.items()} == linked


async def _wait_for_progress(topic: MailboxesTopic, events: int, timeout: float = 60) -> None:
    target = len(topic.events) + events
    deadline = asyncio.get_running_loop().time() + timeout
    while len(topic.events) < target:
        assert asyncio.get_running_loop().time() < deadline, "the registry made no progress"
        await asyncio.sleep(0.01)


async def _plans_once_settled(
    api: httpx.AsyncClient, expected: dict[MailboxOwner, str], timeout: float = 15
) -> dict[MailboxOwner, str]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        plans = {user: await _plan_of(api, user) for user in expected}
        if plans == expected or asyncio.get_running_loop().time() > deadline:
            return plans
        await asyncio.sleep(0.5)


async def _plan_of(api: httpx.AsyncClient, user: MailboxOwner) -> str:
    response = await api.get(f"/v1/accounts/{user.account_id}/users/{user.user_id}/plan")
    return str(response.json()["plan"])


def _plans_json() -> str:
    import json

    return json.dumps(PLAN_LIMITS)


def _auth(services: RunningServices) -> dict[str, str]:
    # Plans and force-unlink are the operators' (docs/adr/0017).
    return {"Authorization": f"Bearer {services.operator_token}"}
