"""How a consumer handles records: read, route, skip, retry, dead-letter, or leave uncommitted;
and, on real Kafka, how it commits only what is done while a slow record holds one slot."""

import asyncio
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest
from aiokafka import AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from pymongo.errors import ConnectionFailure

from localinfra.stack import LocalStack
from mailbox_link_contract import events
from mailbox_link_contract.files import EXAMPLES_DIR as EXAMPLES
from mailbox_link_shared import kafka
from mailbox_link_shared.kafka import EventConsumer, PartitionProgress, handle_record
from mailbox_link_shared.routing import EventRouter, ignore


class RecordingDeadLetters:
    """DeadLetterSink that keeps what it was given."""

    def __init__(self) -> None:
        self.sent: list[tuple[ConsumerRecord[bytes, bytes], str]] = []

    async def send(self, record: ConsumerRecord[bytes, bytes], reason: str) -> None:
        self.sent.append((record, reason))


class Handler:
    """Records the events it is given; fails with `errors` first, one per call."""

    def __init__(self, *errors: Exception, always: Exception | None = None) -> None:
        self.calls = 0
        self.handled: list[events.MailboxLinked] = []
        self._errors = list(errors)
        self._always = always

    async def __call__(self, event: events.MailboxLinked, deps: object = None) -> None:
        self.calls += 1
        if self._always is not None:
            raise self._always
        if self._errors:
            raise self._errors.pop(0)
        self.handled.append(event)


@pytest.fixture(autouse=True)
def no_retry_delays(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kafka, "TRANSIENT_RETRY_DELAYS", (0.0, 0.0, 0.0))
    monkeypatch.setattr(kafka, "FAULT_RETRY_DELAYS", (0.0, 0.0))


@pytest.fixture
def dead_letters() -> RecordingDeadLetters:
    return RecordingDeadLetters()


def _record(value: bytes | None, offset: int = 0) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic="mailbox-link.mailboxes.v1",
        partition=1,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=b"alice@example.org",
        value=value,
        checksum=None,
        serialized_key_size=17,
        serialized_value_size=len(value or b""),
        headers=[("event-type", b"MailboxLinked")],
    )


def _router(handler: Handler) -> EventRouter[None]:
    """A consumer that handles MailboxLinked and knowingly ignores MailboxUnlinked."""
    return EventRouter({events.MailboxLinked: handler, events.MailboxUnlinked: ignore}, None)


def _linked(schema_version: int = 1, **data: object) -> bytes:
    raw = json.loads((EXAMPLES / "MailboxLinked" / "v1.json").read_text())
    raw["schema_version"] = schema_version
    raw["data"].update(data)
    return json.dumps(raw).encode()


async def test_a_good_record_is_handled(dead_letters: RecordingDeadLetters) -> None:
    handler = Handler()
    await handle_record(_record(_linked()), _router(handler), dead_letters)
    [event] = handler.handled
    assert isinstance(event, events.MailboxLinked)
    assert event.data.address == "alice@example.org"
    assert dead_letters.sent == []


@pytest.mark.parametrize("value", [b"{not json", b"", None], ids=["broken", "empty", "tombstone"])
async def test_a_record_that_is_not_json_is_dead_lettered(
    dead_letters: RecordingDeadLetters, value: bytes | None
) -> None:
    handler = Handler()
    record = _record(value)
    await handle_record(record, _router(handler), dead_letters)
    [(sent, reason)] = dead_letters.sent
    assert sent is record
    assert reason.startswith("undecodable")
    assert handler.calls == 0


async def test_an_unknown_schema_version_is_dead_lettered(
    dead_letters: RecordingDeadLetters,
) -> None:
    handler = Handler()
    await handle_record(_record(_linked(schema_version=2)), _router(handler), dead_letters)
    [(_, reason)] = dead_letters.sent
    assert reason.startswith("undecodable")
    assert "schema_version" in reason
    assert handler.calls == 0


async def test_a_dead_letter_reason_carries_no_record_content(
    dead_letters: RecordingDeadLetters,
) -> None:
    value = _linked(mailbox_id={"password": "hunter2-secret"})
    await handle_record(_record(value), _router(Handler()), dead_letters)
    [(_, reason)] = dead_letters.sent
    assert "mailbox_id" in reason
    assert "hunter2" not in reason


async def test_an_undecodable_record_is_dead_lettered_and_the_next_ones_handled(
    dead_letters: RecordingDeadLetters,
) -> None:
    handler = Handler()
    batch = [_record(b"garbage", 0), _record(_linked(), 1), _record(_linked(2), 2)]
    for record in batch:
        await handle_record(record, _router(handler), dead_letters)
    assert len(handler.handled) == 1
    assert [r.offset for r, _ in dead_letters.sent] == [0, 2]


async def test_a_handler_that_keeps_failing_gets_its_record_dead_lettered(
    dead_letters: RecordingDeadLetters,
) -> None:
    handler = Handler(always=ValueError("no such plan"))
    record = _record(_linked())
    await handle_record(record, _router(handler), dead_letters)
    [(sent, reason)] = dead_letters.sent
    assert sent is record
    assert reason.startswith("handler failed")
    assert "ValueError" in reason
    assert handler.calls == 1 + len(kafka.FAULT_RETRY_DELAYS)


async def test_a_fault_that_goes_away_on_retry_is_not_dead_lettered(
    dead_letters: RecordingDeadLetters,
) -> None:
    handler = Handler(ValueError("once"))
    await handle_record(_record(_linked()), _router(handler), dead_letters)
    assert len(handler.handled) == 1
    assert dead_letters.sent == []


async def test_storage_that_stays_away_fails_the_record_for_now_and_dead_letters_nothing(
    dead_letters: RecordingDeadLetters,
) -> None:
    handler = Handler(always=ConnectionFailure("mongo away"))
    with pytest.raises(ConnectionFailure):
        await handle_record(_record(_linked()), _router(handler), dead_letters)
    assert dead_letters.sent == []
    assert handler.calls == 1 + len(kafka.TRANSIENT_RETRY_DELAYS)


async def test_a_transient_failure_is_retried_and_the_event_handled(
    dead_letters: RecordingDeadLetters,
) -> None:
    handler = Handler(ConnectionFailure("blip"))
    await handle_record(_record(_linked()), _router(handler), dead_letters)
    assert handler.calls == 2
    assert len(handler.handled) == 1
    assert dead_letters.sent == []


async def test_an_event_type_the_consumer_does_not_list_is_skipped_not_dead_lettered(
    dead_letters: RecordingDeadLetters,
) -> None:
    handler = Handler()
    never_seen = json.loads(_linked())
    never_seen.update(type="MailboxRenamed", schema_version=3, data={"whatever": 1})
    reserved = (EXAMPLES / "LinkReserved" / "v1.json").read_bytes()
    batch = [_record(json.dumps(never_seen).encode(), 0), _record(reserved, 1)]
    batch.append(_record(_linked(), 2))
    for record in batch:
        await handle_record(record, _router(handler), dead_letters)
    assert dead_letters.sent == []
    assert len(handler.handled) == 1


async def test_an_unknown_schema_version_of_a_listed_type_is_dead_lettered_even_if_ignored(
    dead_letters: RecordingDeadLetters,
) -> None:
    unlinked = json.loads((EXAMPLES / "MailboxUnlinked" / "v1.json").read_text())
    unlinked["schema_version"] = 2
    handler = Handler()
    await handle_record(_record(json.dumps(unlinked).encode()), _router(handler), dead_letters)
    [(_, reason)] = dead_letters.sent
    assert "schema_version" in reason
    assert handler.calls == 0


def test_the_offset_to_commit_stops_below_the_lowest_unfinished_record() -> None:
    progress = PartitionProgress()
    assert progress.committable() is None  # nothing fetched: nothing to commit
    for offset in range(10, 15):
        progress.started(offset)
    for offset in (10, 12, 13, 14):
        progress.finished(offset)
    assert progress.committable() == 11  # 11 runs on: 12-14 done, but not committed past it
    progress.committed = 11
    assert progress.ahead_of_commit() is None
    progress.finished(11)
    assert progress.ahead_of_commit() == 15


# On real Kafka: the consumer keeps up to N events in progress and commits what is done.

MAX_WAIT = 60.0  # generous: Kafka's group join and a busy 2-core machine


class Gate:
    """A handler that holds the events of `held` addresses until released; counts what runs."""

    def __init__(self, *held: str) -> None:
        self.held = set(held)
        self.release = asyncio.Event()
        self.started: list[str] = []
        self.handled: list[str] = []
        self.running = 0
        self.most_running = 0

    async def __call__(self, event: events.MailboxLinked, deps: object = None) -> None:
        address = event.data.address
        self.started.append(address)
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            if address in self.held or "*" in self.held:
                await self.release.wait()
            self.handled.append(address)
        finally:
            self.running -= 1


@dataclass
class KafkaTopic:
    """A fresh topic on the session's Kafka and a consumer group name for one test."""

    bootstrap: str
    name: str
    group: str

    async def publish(self, *addresses: str) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=0)
        await producer.start()
        try:
            for address in addresses:
                await producer.send_and_wait(self.name, _linked(address=address), partition=0)
        finally:
            await producer.stop()

    async def committed(self) -> int | None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            offsets = await admin.list_consumer_group_offsets(self.group)
        finally:
            await admin.close()
        mark = offsets.get(TopicPartition(self.name, 0))
        return None if mark is None or mark.offset < 0 else int(mark.offset)

    def consumer(self, handler: Gate, concurrency: int) -> EventConsumer:
        return EventConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=self.group,
            client_id="test",
            topics=[self.name],
            router=EventRouter({events.MailboxLinked: handler}, None),
            dead_letters=RecordingDeadLetters(),
            concurrency=concurrency,
        )


@pytest.fixture
async def topic(local_stack: LocalStack) -> KafkaTopic:
    bootstrap = local_stack.endpoints.kafka_bootstrap
    name = f"consuming-{secrets.token_hex(4)}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()
    return KafkaTopic(bootstrap, name, f"{name}-group")


async def _until(what: str, holds: Callable[[], Awaitable[bool]]) -> None:
    deadline = time.monotonic() + MAX_WAIT
    while not await holds():
        if time.monotonic() > deadline:
            raise AssertionError(f"still not {what} after {MAX_WAIT} s")
        await asyncio.sleep(0.05)


def _now(condition: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return condition()

    return check


async def test_records_after_a_slow_one_finish_and_the_commit_stops_below_it(
    topic: KafkaTopic,
) -> None:
    gate = Gate("slow@example.org")
    consumer = topic.consumer(gate, concurrency=4)
    await topic.publish("r0@example.org", "slow@example.org", "r2@example.org", "r3@example.org")
    await consumer.start()
    try:
        await _until("handled", _now(lambda: len(gate.handled) == 3))
        await _until("committed up to the slow one", lambda: _equals(topic.committed(), 1))
        # Published while the slow one still runs: no batch waits for it.
        await topic.publish("r4@example.org", "r5@example.org")
        await _until("handled", _now(lambda: len(gate.handled) == 5))
        assert "slow@example.org" not in gate.handled
        for _ in range(10):  # the commit never passes the unfinished record
            assert await topic.committed() == 1
            await asyncio.sleep(0.1)
        gate.release.set()
        await _until("committed to the end", lambda: _equals(topic.committed(), 6))
    finally:
        gate.release.set()
        await consumer.stop()


async def test_a_crash_delivers_again_from_the_first_unfinished_record(topic: KafkaTopic) -> None:
    gate = Gate("slow@example.org")
    first = topic.consumer(gate, concurrency=4)
    await topic.publish("r0@example.org", "slow@example.org", "r2@example.org")
    await first.start()
    await _until("handled", _now(lambda: len(gate.handled) == 2))
    await _until("committed up to the slow one", lambda: _equals(topic.committed(), 1))
    await first.stop(grace=0)  # the slow one is cut off, as by a crash
    assert await topic.committed() == 1

    again = Gate()
    second = topic.consumer(again, concurrency=4)
    await second.start()
    try:
        await _until("delivered again", _now(lambda: len(again.handled) == 2))
        assert again.handled.count("slow@example.org") == 1
        assert "r0@example.org" not in again.handled  # done before the slow one: committed
        await _until("committed to the end", lambda: _equals(topic.committed(), 3))
    finally:
        await second.stop()


async def test_no_more_than_n_events_are_in_progress_and_the_next_starts_when_one_ends(
    topic: KafkaTopic,
) -> None:
    gate = Gate("*")
    consumer = topic.consumer(gate, concurrency=2)
    await topic.publish(*(f"r{i}@example.org" for i in range(5)))
    await consumer.start()
    try:
        await _until("started", _now(lambda: len(gate.started) == 2))
        await asyncio.sleep(1.5)  # time enough for a third to start, if it could
        assert len(gate.started) == 2
        assert consumer.in_progress == 2
        gate.release.set()
        await _until("handled", _now(lambda: len(gate.handled) == 5))
        assert gate.most_running == 2
        await _until("committed to the end", lambda: _equals(topic.committed(), 5))
    finally:
        gate.release.set()
        await consumer.stop()


async def _equals(offset: Awaitable[int | None], expected: int) -> bool:
    return await offset == expected


async def test_a_rebalance_lets_go_of_a_held_event_and_its_partition_is_handled_again(
    topic: KafkaTopic,
) -> None:
    held = Gate("slow@example.org")
    first = topic.consumer(held, concurrency=4)
    await topic.publish("slow@example.org", "r1@example.org")
    await first.start()
    joined = Gate()
    second = topic.consumer(joined, concurrency=4)
    try:
        await _until("handled", _now(lambda: held.handled == ["r1@example.org"]))
        await _until("committed up to the held one", lambda: _equals(topic.committed(), 0))
        await second.start()
        # The group rebalances without waiting for the held event (a grace of seconds, not
        # its end), and the partition's new owner, whichever it is, gets the event again.
        await _until(
            "delivered again",
            _now(lambda: (held.started + joined.started).count("slow@example.org") == 2),
        )
        assert "slow@example.org" not in held.handled
        held.release.set()
        await _until("committed to the end", lambda: _equals(topic.committed(), 2))
        await _until("let go events finished", _now(lambda: first.in_progress == 0))
    finally:
        held.release.set()
        await second.stop()
        await first.stop()
