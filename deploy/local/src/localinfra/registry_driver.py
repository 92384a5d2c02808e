"""Drives a real registry through Kafka: plays link-api, the verifier and billing, and follows
what the registry answers on the mailboxes topic. Used by the end-to-end tests and `make bench`."""

import asyncio
import contextlib
import uuid
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from pydantic import SecretStr
from pymongo import AsyncMongoClient

from mailbox_link_contract.events import (
    Envelope,
    Failure,
    LinkRejected,
    LinkRequested,
    LinkRequestedData,
    MailboxLinked,
    MailboxOwner,
    MailboxVerified,
    MailboxVerifiedData,
    ServerSettings,
    UserPlanChanged,
    UserPlanChangedData,
    VerificationFailed,
    VerificationFailedData,
)
from mailbox_link_contract.failures import FailureCode
from mailbox_link_contract.reading import read_event
from mailbox_link_contract.topics import EVENT_MODELS, Topics
from mailbox_link_shared.crypto import SecretBox, generate_key

_BOX = SecretBox({"k1": SecretStr(generate_key())}, "k1")


def owner(account: int | str, user: int | str) -> MailboxOwner:
    """Returns a test user."""
    return MailboxOwner(account_id=f"acct-{account}", user_id=f"user-{user}")


def link_requested(who: MailboxOwner, address: str) -> LinkRequested:
    """Returns what link-api would publish for a new link request."""
    server = ServerSettings(host="mail.example.org", port=993, security="ssl", username=address)
    data = LinkRequestedData(
        link_id=uuid.uuid4().hex,
        owner=who,
        address=address,
        provider="imap",
        imap=server,
        smtp=server.model_copy(update={"port": 465}),
        credentials=_BOX.seal('{"imap_password": "x", "smtp_password": "x"}', address),
    )
    return LinkRequested(correlation_id=data.link_id, producer="test", data=data)


def verified(request: LinkRequested) -> MailboxVerified:
    """Returns the verifier's success for the request."""
    data = MailboxVerifiedData(**request.data.model_dump())
    return MailboxVerified(correlation_id=request.correlation_id, producer="test", data=data)


def verification_failed(request: LinkRequested) -> VerificationFailed:
    """Returns the verifier's failure (wrong password) for the request."""
    data = VerificationFailedData(
        link_id=request.data.link_id,
        owner=request.data.owner,
        address=request.data.address,
        provider=request.data.provider,
        failure=Failure.of(FailureCode.IMAP_AUTH_FAILED),
    )
    return VerificationFailed(correlation_id=request.correlation_id, producer="test", data=data)


def plan_changed(who: MailboxOwner, plan: str, changed_at: datetime) -> UserPlanChanged:
    """Returns what billing would publish when the user's plan changes."""
    data = UserPlanChangedData(owner=who, plan=plan, changed_at=changed_at)
    return UserPlanChanged(correlation_id=uuid.uuid4().hex, producer="billing", data=data)


def redelivered(event: Envelope) -> Envelope:
    """Returns the same event again under a new event id, as a retrying producer might."""
    return event.model_copy(update={"event_id": uuid.uuid4()})


class EventSender:
    """Publishes events the way the services do: keyed, to the topic for their type."""

    def __init__(self, bootstrap: str, namespace: str) -> None:
        self.topics = Topics.for_namespace(namespace)
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5
        )

    async def __aenter__(self) -> "EventSender":
        await self._producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._producer.stop()

    async def send(self, events: Iterable[Envelope]) -> None:
        """Publishes the events (concurrently) and waits until Kafka has stored them all."""
        futures = [
            await self._producer.send(
                self.topics.for_event(event.type),
                event.model_dump_json().encode(),
                key=event.partition_key(),
            )
            for event in events
        ]
        await asyncio.gather(*futures)

    async def send_raw(self, topic: str, key: bytes, value: bytes) -> tuple[int, int]:
        """Publishes bytes as they are, e.g. a record no consumer can decode; returns the
        record's partition and offset."""
        stored = await (await self._producer.send(topic, value, key=key))
        return int(stored.partition), int(stored.offset)


class MailboxesTopic:
    """Follows the mailboxes topic from the beginning and keeps every event, in order."""

    def __init__(self, bootstrap: str, namespace: str) -> None:
        self._bootstrap = bootstrap
        self._topic = Topics.for_namespace(namespace).mailboxes
        self.events: list[Envelope] = []
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._arrived = asyncio.Event()

    async def __aenter__(self) -> "MailboxesTopic":
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap, enable_auto_commit=False, fetch_max_wait_ms=100
        )
        await self._consumer.start()
        partitions = self._consumer.partitions_for_topic(self._topic)
        if partitions is None:
            await self._consumer._client.force_metadata_update()
            partitions = self._consumer.partitions_for_topic(self._topic) or set()
        assigned = [TopicPartition(self._topic, p) for p in partitions]
        self._consumer.assign(assigned)
        await self._consumer.seek_to_beginning(*assigned)
        self._task = asyncio.create_task(self._follow())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()

    async def _follow(self) -> None:
        assert self._consumer is not None
        while True:
            batch = await self._consumer.getmany(timeout_ms=200)
            for records in batch.values():
                for record in records:
                    event = read_event(record.value or b"", EVENT_MODELS)
                    if isinstance(event, Envelope):
                        self.events.append(event)
            if batch:
                self._arrived.set()

    def finals(self) -> dict[str, set[str]]:
        """Returns, per link id, the distinct event ids of its final events seen so far."""
        finals: dict[str, set[str]] = defaultdict(set)
        for event in self.events:
            if isinstance(event, MailboxLinked | LinkRejected):
                finals[event.data.link_id].add(str(event.event_id))
        return finals

    def final_events(self) -> dict[str, MailboxLinked | LinkRejected]:
        """Returns the (first) final event of each link."""
        finals: dict[str, MailboxLinked | LinkRejected] = {}
        for event in self.events:
            if isinstance(event, MailboxLinked | LinkRejected):
                finals.setdefault(event.data.link_id, event)
        return finals

    async def wait_for_finals(self, link_ids: Iterable[str], stall: float = 30.0) -> None:
        """Waits until every link has a final event, for as long as finals keep arriving: fails,
        naming how many have none, only after `stall` seconds without a new one. A busy
        machine is slow, not stuck, and must not fail the test."""
        wanted = set(link_ids)
        loop = asyncio.get_running_loop()
        last_progress, missing_before = loop.time(), len(wanted) + 1
        while missing := wanted - set(self.finals()):
            if len(missing) < missing_before:
                last_progress, missing_before = loop.time(), len(missing)
            left = last_progress + stall - loop.time()
            if left <= 0:
                raise AssertionError(
                    f"{len(missing)} of {len(wanted)} links have no final event, "
                    f"none arriving for {stall:.0f} s"
                )
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), min(left, 1.0))


async def registry_documents(uri: str, namespace: str) -> dict[str, list[dict[str, Any]]]:
    """Returns the registry's collections; each link document gets its `state`, `claims` and
    `reconnects` from its latest decision (the document's own are hints) and `step`."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri, tz_aware=True)
    try:
        db = client[f"{namespace}-registry"]
        names = ("links", "decisions", "claims", "plans", "pending", "verifications")
        documents = {name: [d async for d in db[name].find()] for name in names}
    finally:
        await client.close()
    latest: dict[str, dict[str, Any]] = {}
    for decision in documents["decisions"]:
        known: dict[str, Any] | None = latest.get(decision["link_id"])
        if known is None or known["step"] < decision["step"]:
            latest[decision["link_id"]] = decision
    for link in documents["links"]:
        found = latest.get(link["_id"])
        link["state"] = found["state"] if found else "reserving"
        link["claims"] = list(found["claims"]) if found else []
        link["step"] = found["step"] if found else 0
        link["reconnects"] = found.get("reconnects") if found else None
    return documents
