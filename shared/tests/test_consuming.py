"""How a consumer handles records: read, route, skip, retry, dead-letter, or leave uncommitted;
and, on real Kafka, how it commits only what is done while a slow record holds one slot."""

import json

import pytest
from aiokafka import ConsumerRecord
from pymongo.errors import ConnectionFailure

from mailbox_link_contract import events
from mailbox_link_contract.files import EXAMPLES_DIR as EXAMPLES
from mailbox_link_shared import kafka
from mailbox_link_shared.kafka import handle_record
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
    await handle_record(
        _record(json.dumps(unlinked).encode()), _router(handler), dead_letters
    )
    [(_, reason)] = dead_letters.sent
    assert "schema_version" in reason
    assert handler.calls == 0
