"""A LinkRequested the outbox relay sends (its first publish failed) continues the trace of the
request that stored it: the request's traceparent is kept with the outbox, in memory, in the
real MongoDB-protocol store, and on the record the relay puts on real Kafka."""

import asyncio
import secrets
from datetime import timedelta
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from faststream.kafka import KafkaBroker
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from pydantic import SecretStr
from pymongo import AsyncMongoClient

from link_api import handlers
from link_api.adapters.link_store import MongoLinkStore
from link_api.domain.link_request import LinkRequest
from link_api.domain.link_status import LinkProgress, LinkStatus, LinkView
from link_api.handlers import LinkApiDeps
from link_api_fakes import InMemoryLinkStore
from localinfra.stack import LocalStack
from mailbox_link_contract.events import (
    Envelope,
    LinkRequested,
    MailboxOwner,
    ProviderType,
    ServerSettings,
    utc_now,
)
from mailbox_link_shared.credentials import MailboxCredentials
from mailbox_link_shared.crypto import SecretBox, generate_key
from mailbox_link_shared.kafka import publish_event
from mailbox_link_shared.publishing import RecordingPublisher
from mailbox_link_shared.tracing import current_ids, span

OWNER = MailboxOwner(account_id="acme", user_id="u1")
NOW = timedelta(seconds=-1)  # no grace: whatever is listed is looked at
RELAY_SPAN = "link-api outbox send"

_EXPORTER = InMemorySpanExporter()
_ADDED: list[bool] = []


@pytest.fixture
def spans() -> InMemorySpanExporter:
    """Spans of this test in memory. The global provider can be set once per process (another
    suite may have set it): this exporter is added to whichever SDK provider is installed."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    if not _ADDED:
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        _ADDED.append(True)
    _EXPORTER.clear()
    return _EXPORTER


class TracedPublisher(RecordingPublisher):
    """Records events with the trace ids current at publication, or refuses them while down."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.trace_ids: list[str | None] = []

    async def publish(self, event: Envelope) -> None:
        if self.down:
            raise ConnectionError("kafka is down")
        ids = current_ids()
        self.trace_ids.append(ids[0] if ids else None)
        await super().publish(event)


def _request() -> LinkRequest:
    server = ServerSettings(host="imap.example.org", port=993, security="ssl", username="a@x.org")
    credentials = MailboxCredentials("pw-1", "pw-1")
    return LinkRequest(OWNER, "a@x.org", ProviderType.IMAP, server, server, credentials)


def _deps(store: Any, publisher: Any) -> LinkApiDeps:
    box = SecretBox({"k1": SecretStr(generate_key())}, "k1")
    return LinkApiDeps(store, publisher, box, timedelta(minutes=15))


async def _request_while_kafka_is_down(deps: LinkApiDeps, publisher: TracedPublisher) -> str:
    """A request in its own server span whose publish fails; returns that span's trace id."""
    publisher.down = True
    with span("POST /links", SpanKind.SERVER):
        ids = current_ids()
        assert ids is not None
        await handlers.request_link(_request(), None, deps)
    publisher.down = False
    return ids[0]


def _named(spans: InMemorySpanExporter, name: str) -> ReadableSpan:
    [found] = [s for s in spans.get_finished_spans() if s.name == name]
    return found


async def test_a_relayed_request_continues_the_requests_trace(
    spans: InMemorySpanExporter,
) -> None:
    publisher = TracedPublisher()
    deps = _deps(InMemoryLinkStore(), publisher)
    trace_id = await _request_while_kafka_is_down(deps, publisher)
    assert publisher.events == []

    with span("relay round"):  # the relay's timer may run in a trace of its own
        relay_round = current_ids()
        assert await handlers.relay_unsent(deps, NOW, 100) == 1

    [event] = publisher.events
    assert isinstance(event, LinkRequested)
    assert publisher.trace_ids == [trace_id]
    relayed = _named(spans, RELAY_SPAN)
    request = _named(spans, "POST /links")
    assert relayed.context is not None
    assert request.context is not None
    assert f"{relayed.context.trace_id:032x}" == trace_id
    assert relayed.parent is not None
    assert relayed.parent.span_id == request.context.span_id
    assert relayed.attributes is not None
    assert relayed.attributes["mailbox_link.link_id"] == event.data.link_id
    # ... linked to the relay's round, which is where it ran.
    assert relay_round is not None
    assert [f"{link.context.trace_id:032x}" for link in relayed.links] == [relay_round[0]]


async def test_an_outbox_stored_without_a_trace_is_still_relayed_in_a_new_one(
    spans: InMemorySpanExporter,
) -> None:
    publisher = TracedPublisher()
    store = InMemoryLinkStore()
    deps = _deps(store, publisher)
    await _request_while_kafka_is_down(deps, publisher)
    [link_id] = store.links
    store.outbox_traces.clear()  # as a document written before tracing

    assert await handlers.relay_unsent(deps, NOW, 100) == 1
    assert len(publisher.events) == 1
    relayed = _named(spans, RELAY_SPAN)
    assert relayed.parent is None  # the root of a trace of its own, as before
    assert relayed.attributes is not None
    assert relayed.attributes["mailbox_link.link_id"] == link_id


async def test_a_request_outside_any_trace_stores_no_trace_context() -> None:
    store = InMemoryLinkStore()
    publisher = TracedPublisher()
    publisher.down = True
    await handlers.request_link(_request(), None, _deps(store, publisher))
    [link_id] = store.links
    assert await store.get_outbox_trace(link_id) == {}


# --- the real store and the real Kafka ----------------------------------------------------


def _link(link_id: str) -> LinkView:
    now = utc_now()
    return LinkView(
        link_id, OWNER, "a@example.org", ProviderType.IMAP, LinkStatus.PENDING, now, now
    )


async def test_the_mongo_store_keeps_the_trace_with_the_outbox_until_the_link_ends(
    mongo_client: AsyncMongoClient[dict[str, Any]],
) -> None:
    store = MongoLinkStore(mongo_client, f"outbox-trace-{secrets.token_hex(4)}")
    traceparent = f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"
    carried = {"traceparent": traceparent, "tracestate": "vendor=1", "baggage": "user=alice"}
    await store.insert_link(_link("l1"), '{"event": 1}', carried)
    # Only the W3C fields are kept.
    assert await store.get_outbox_trace("l1") == {
        "traceparent": traceparent,
        "tracestate": "vendor=1",
    }
    # A document from before tracing (no field) and a link without an outbox: none.
    await store.insert_link(_link("l2"), '{"event": 2}')
    assert await store.get_outbox_trace("l2") == {}
    assert await store.get_outbox_trace("unknown") == {}
    assert await store.advance_link("l1", LinkProgress(LinkStatus.LINKED, utc_now()))
    assert await store.get_outbox_trace("l1") == {}


class KafkaAfterOutage:
    """Refuses while down (as a publish during a Kafka outage), then publishes to real Kafka."""

    def __init__(self, broker: KafkaBroker, topic: str) -> None:
        self.broker, self.topic, self.down = broker, topic, False

    async def publish(self, event: Envelope) -> None:
        if self.down:
            raise ConnectionError("kafka is down")
        await publish_event(self.broker, self.topic, event)


async def test_the_record_the_relay_puts_on_kafka_carries_the_requests_trace_id(
    spans: InMemorySpanExporter,
    local_stack: LocalStack,
    mongo_client: AsyncMongoClient[dict[str, Any]],
) -> None:
    bootstrap = local_stack.endpoints.kafka_bootstrap
    topic = f"outbox-trace-{secrets.token_hex(4)}"
    broker = KafkaBroker(bootstrap, linger_ms=0)
    await broker.start()
    try:
        publisher = KafkaAfterOutage(broker, topic)
        store = MongoLinkStore(mongo_client, f"outbox-trace-{secrets.token_hex(4)}")
        deps = _deps(store, publisher)
        publisher.down = True
        with span("POST /links", SpanKind.SERVER):
            ids = current_ids()
            assert ids is not None
            requested = await handlers.request_link(_request(), None, deps)
        publisher.down = False
        assert (await store.get_outbox_trace(requested.link.link_id))["traceparent"].split("-")[
            1
        ] == ids[0]
        assert await handlers.relay_unsent(deps, NOW, 100) == 1
    finally:
        await broker.stop()

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        records = await asyncio.wait_for(_one_batch(consumer), 30)
    finally:
        await consumer.stop()
    [record] = records
    headers = {key: value.decode() for key, value in record.headers}
    assert headers["event-type"] == "LinkRequested"
    _, trace_id, parent_id, _ = headers["traceparent"].split("-")
    assert trace_id == ids[0]
    # Its parent is the relay's producer span, inside the request's trace.
    producer = _named(spans, f"send {topic}")
    assert producer.context is not None
    assert f"{producer.context.span_id:016x}" == parent_id
    relayed = _named(spans, RELAY_SPAN)
    assert producer.parent is not None
    assert relayed.context is not None
    assert producer.parent.span_id == relayed.context.span_id


async def _one_batch(consumer: AIOKafkaConsumer) -> list[Any]:
    while True:
        batch = await consumer.getmany(timeout_ms=1000)
        for records in batch.values():
            if records:
                return list(records)
