"""Mailbox health on the real stack: the Mongo adapter's health documents and checks on the
session's MongoDB-protocol server, and the scheduler publishing MailboxCheckRequested on the
real Kafka and applying the MailboxChecked a verifier would answer (published here)."""

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from pydantic import SecretStr
from pymongo import AsyncMongoClient

from localinfra.stack import LocalStack
from mailbox_link_contract.events import (
    CheckReason,
    Failure,
    MailboxChecked,
    MailboxCheckedData,
    MailboxHealth,
    MailboxOwner,
    utc_now,
)
from mailbox_link_contract.failures import FailureCode
from mailbox_link_contract.topics import Topics
from mailbox_link_shared.crypto import generate_key
from mailbox_link_shared.kafka import KafkaEventPublisher, make_broker, publish_event
from mailbox_link_shared.publishing import RecordingPublisher
from mailbox_link_shared.topics import prepare_topics
from registry import handlers
from registry.adapters.registry_store import MongoRegistryStore
from registry.config import SERVICE_NAME, Settings
from registry.domain.health import HealthCheck, HealthPolicy, HealthRecord
from registry.domain.links import Progress
from registry.domain.plans import DEFAULT_PLANS, PlanTable
from registry.entrypoints.events import register_subscribers
from registry.entrypoints.housekeeping import make_health_scheduler
from registry.handlers import RegistryDeps
from registry_fakes import requested_event, verified_event

ALICE = MailboxOwner(account_id="acme", user_id="alice")
ADDRESS = "box@example.org"
MAX_WAIT = 60.0  # Kafka's group join on a busy 2-core machine


@pytest.fixture
async def client(local_stack: LocalStack) -> AsyncIterator[AsyncMongoClient[dict[str, Any]]]:
    uri = local_stack.endpoints.mongodb_uri
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri, tz_aware=True, maxPoolSize=8)
    try:
        yield mongo
    finally:
        await mongo.close()


@pytest.fixture
async def store(client: AsyncMongoClient[dict[str, Any]]) -> AsyncIterator[MongoRegistryStore]:
    name = f"registry-health-{secrets.token_hex(4)}"
    store = MongoRegistryStore(client, name)
    await store.create_indexes()
    yield store
    await client.drop_database(name)


async def test_health_documents_and_checks_on_the_real_store(store: MongoRegistryStore) -> None:
    now = utc_now()
    first = HealthRecord("m1", "l1", next_check_at=now - timedelta(minutes=1))
    assert await store.add_health(first)
    assert not await store.add_health(HealthRecord("m1", "other", next_check_at=now))
    await store.add_health(HealthRecord("m2", "l2", next_check_at=now - timedelta(minutes=2)))
    await store.add_health(HealthRecord("m3", "l3", next_check_at=now + timedelta(hours=1)))
    assert [h.mailbox_id for h in await store.due_health(now, 10)] == ["m2", "m1"]
    assert [h.mailbox_id for h in await store.due_health(now, 1)] == ["m2"]

    # Of concurrent claims of one check exactly one wins.
    claims = [HealthCheck("m1", 1, CheckReason.SCHEDULED, now) for _ in range(50)]
    assert (await asyncio.gather(*(store.add_check(c) for c in claims))).count(True) == 1
    await store.add_check(HealthCheck("m1", 2, CheckReason.ON_DEMAND, now))
    check = await store.get_check("m1", 2)
    assert check is not None
    assert (check.check_id, check.reason) == ("m1-2", CheckReason.ON_DEMAND)
    await store.note_check_requested("m1", 2, now + timedelta(minutes=5))

    # A result's fields and the request's are written apart (hints of one document).
    failure = Failure.of(FailureCode.IMAP_UNREACHABLE, "connection refused by 10.0.0.1")
    applied = HealthRecord(
        "m1",
        "l1",
        next_check_at=now + timedelta(minutes=1),
        last_checked_at=now,
        last_failure=failure,
        refusals=0,
        back_off=1,
        applied=2,
    )
    await store.note_check_result(applied)
    stored = await store.get_health("m1")
    assert stored is not None
    assert (stored.last_check, stored.applied, stored.back_off) == (2, 2, 1)
    assert stored.last_failure is not None
    assert stored.last_failure.code is FailureCode.IMAP_UNREACHABLE
    assert stored.last_failure.detail == ""  # never what a server said
    await store.forget_checks_before("m1", 2)
    assert await store.get_check("m1", 1) is None
    assert await store.get_check("m1", 2) is not None
    await store.forget_health("m1")
    assert await store.get_health("m1") is None
    assert await store.get_check("m1", 2) is None


async def test_linked_links_without_health_are_found(store: MongoRegistryStore) -> None:
    deps = RegistryDeps(store, RecordingPublisher(), PlanTable(DEFAULT_PLANS, "organization"))
    for n in range(3):
        address = f"box{n}@example.org"
        await handlers.when_link_requested_reserve(requested_event(ALICE, f"l{n}", address), deps)
        await handlers.when_mailbox_verified_link(verified_event(ALICE, f"l{n}", address), deps)
    assert await store.linked_without_health(10) == []
    [record] = [r for r in await handlers.list_mailboxes(ALICE, deps) if r.link_id == "l1"]
    assert record.mailbox is not None
    await store.forget_health(record.mailbox.mailbox_id)
    assert await store.linked_without_health(10) == ["l1"]
    # Decisions stored before health existed (no `degraded` field) read back as active.
    await store._decisions.update_one({"_id": "l1/2"}, {"$unset": {"mailbox.degraded": ""}})
    decision = await store.get_decision("l1", 2)
    assert decision is not None
    assert decision.mailbox is not None
    assert decision.mailbox.health is MailboxHealth.ACTIVE
    await store.note_progress("l1", Progress(step=2), utc_now())  # no longer hinted linked
    assert await store.linked_without_health(10) == []


# --- on Kafka ---------------------------------------------------------------------------------


async def _until(what: str, holds: Callable[[], Awaitable[bool]]) -> None:
    deadline = time.monotonic() + MAX_WAIT
    while not await holds():
        if time.monotonic() > deadline:
            raise AssertionError(f"still not {what} after {MAX_WAIT} s")
        await asyncio.sleep(0.1)


class TopicReader:
    """Reads one topic from its start, keeping the events' JSON."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.events: list[dict[str, Any]] = []
        self._consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
        )
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._consumer.start()
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for record in self._consumer:
            if record.value:
                self.events.append(json.loads(record.value))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await self._consumer.stop()

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]


async def test_the_scheduler_requests_checks_on_kafka_and_applies_their_results(
    local_stack: LocalStack, client: AsyncMongoClient[dict[str, Any]]
) -> None:
    namespace = f"health-{secrets.token_hex(4)}"
    settings = Settings(
        kafka_bootstrap_servers=local_stack.endpoints.kafka_bootstrap,
        namespace=namespace,
        encryption_keys={"k1": SecretStr(generate_key())},
        encryption_key_id="k1",
        kafka_topic_partitions={"mailbox-checks.v1": 1, "mailboxes.v1": 1},
        health_check_interval_seconds=1,
        health_retry_seconds=1,
        health_check_jitter=0,
        health_scheduler_interval_seconds=0.2,
        health_check_timeout_seconds=30,
    )
    await prepare_topics(settings)
    topics = Topics.for_namespace(namespace)
    broker = make_broker(settings, SERVICE_NAME)
    database = f"{namespace}-registry"
    store = MongoRegistryStore(client, database)
    await store.create_indexes()
    policy = settings.health_policy()
    assert policy.interval == timedelta(seconds=1)
    deps = RegistryDeps(
        store,
        KafkaEventPublisher(broker, topics),
        PlanTable(DEFAULT_PLANS, "basic"),
        health=HealthPolicy(
            interval=policy.interval,
            jitter=0.0,
            retry=policy.retry,
            auth_failures=policy.auth_failures,
            batch=policy.batch,
            check_timeout=policy.check_timeout,
        ),
    )
    consumer = register_subscribers(broker, settings, deps)
    scheduler = make_health_scheduler(deps, settings.health_scheduler_interval_seconds)
    checks = TopicReader(settings.kafka_bootstrap_servers, topics.mailbox_checks)
    mailboxes = TopicReader(settings.kafka_bootstrap_servers, topics.mailboxes)
    await broker.start()
    try:
        await consumer.start()
        await checks.start()
        await mailboxes.start()
        await handlers.when_link_requested_reserve(requested_event(ALICE, "l1", ADDRESS), deps)
        await handlers.when_mailbox_verified_link(verified_event(ALICE, "l1", ADDRESS), deps)
        [record] = await handlers.list_mailboxes(ALICE, deps)
        assert record.mailbox is not None
        mailbox_id = record.mailbox.mailbox_id
        await scheduler.start()

        async def requested() -> bool:
            return bool(checks.of("MailboxCheckRequested"))

        await _until("requested", requested)
        [asked] = checks.of("MailboxCheckRequested")
        assert asked["data"]["check_id"] == f"{mailbox_id}-1"
        assert asked["data"]["reason"] == "scheduled"
        assert asked["data"]["credentials"]["ciphertext"]  # sealed, never in the clear
        # A verifier's answer: the server could not be reached.
        answer = MailboxChecked(
            correlation_id="l1",
            producer="imap-verifier",
            data=MailboxCheckedData(
                check_id=asked["data"]["check_id"],
                mailbox_id=mailbox_id,
                link_id="l1",
                owner=ALICE,
                address=ADDRESS,
                provider=record.provider,
                failure=Failure.of(FailureCode.IMAP_UNREACHABLE),
            ),
        )
        await publish_event(broker, topics.mailbox_checks, answer)

        async def degraded() -> bool:
            return any(
                e["data"]["health"] == "degraded" for e in mailboxes.of("MailboxHealthChanged")
            )

        await _until("degraded", degraded)
        [listed] = await handlers.list_mailboxes(ALICE, deps)
        assert listed.mailbox is not None
        assert listed.mailbox.health is MailboxHealth.DEGRADED
        health = await store.get_health(mailbox_id)
        assert health is not None
        assert health.applied == 1
        assert health.last_checked_at is not None

        # Retried a second later (back-off from MBL_HEALTH_RETRY_SECONDS): check 2.
        async def retried() -> bool:
            return len(checks.of("MailboxCheckRequested")) >= 2

        await _until("retried", retried)
        assert checks.of("MailboxCheckRequested")[1]["data"]["check_id"] == f"{mailbox_id}-2"
    finally:
        await scheduler.stop()
        await checks.stop()
        await mailboxes.stop()
        await consumer.stop()
        await broker.stop()
        await client.drop_database(database)
