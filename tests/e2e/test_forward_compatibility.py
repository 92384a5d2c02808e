"""The contract's promise to producers, on the running system: an event type no consumer has
ever seen, published on every topic, is skipped and committed past by every service that reads
the topic, and nothing is dead-lettered."""

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from localinfra.registry_driver import EventSender
from localinfra.services import RunningServices, start_services
from localinfra.stack import Endpoints
from mailbox_link_contract.topics import CATALOGUE, Topics

from .conftest import service_config
from .probes import read_topics

NAMESPACE = "e2e-forward-compat"
# How long the consumers may show no progress at all before the test gives up.
STALL_SECONDS = 60


@pytest.fixture(scope="module")
def all_services(infra: Endpoints, workdir: Path) -> Iterator[RunningServices]:
    running = start_services(service_config(infra, namespace=NAMESPACE), workdir / NAMESPACE)
    try:
        yield running
    finally:
        running.stop()


def _never_seen(key: str) -> bytes:
    return json.dumps(
        {
            "event_id": str(uuid.uuid4()),
            "type": "MailboxTeleported",
            "schema_version": 1,
            "occurred_at": "2026-12-02T10:00:00.000Z",
            "correlation_id": "never-seen",
            "producer": "a-service-from-the-future",
            "data": {"address": key, "destination": "the moon"},
        }
    ).encode()


async def _committed(admin: AIOKafkaAdminClient, group: str) -> dict[TopicPartition, int]:
    offsets = await admin.list_consumer_group_offsets(group)
    return {tp: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}


async def test_a_never_seen_event_type_on_every_topic_is_skipped_and_committed_by_every_service(
    all_services: RunningServices, infra: Endpoints
) -> None:
    topics = Topics.for_namespace(NAMESPACE)
    carried = [spec for spec in CATALOGUE if spec.consumers]
    # One record per topic and partition key, so every partition of every topic gets one.
    sent: dict[TopicPartition, int] = {}
    async with EventSender(infra.kafka_bootstrap, NAMESPACE) as sender:
        for spec in carried:
            for n in range(12):
                key = f"future-{n}@example.org"
                partition, offset = await sender.send_raw(
                    topics.name_of(spec), key.encode(), _never_seen(key)
                )
                tp = TopicPartition(topics.name_of(spec), partition)
                sent[tp] = max(sent.get(tp, -1), offset)
    assert {tp.topic for tp in sent} == {topics.name_of(spec) for spec in carried}

    # Each consuming group must commit past the last such record of each of its partitions.
    wanted = {
        (f"{NAMESPACE}.{service}", tp): offset + 1
        for spec in carried
        for service in spec.consumers
        for tp, offset in sent.items()
        if tp.topic == topics.name_of(spec)
    }
    admin = AIOKafkaAdminClient(bootstrap_servers=infra.kafka_bootstrap)
    await admin.start()
    try:
        loop = asyncio.get_running_loop()
        last_progress, remaining = loop.time(), len(wanted)
        while True:
            groups = {group for group, _ in wanted}
            committed = {group: await _committed(admin, group) for group in groups}
            behind = [
                (group, tp)
                for (group, tp), offset in wanted.items()
                if committed[group].get(tp, -1) < offset
            ]
            if not behind:
                break
            if len(behind) < remaining:
                last_progress, remaining = loop.time(), len(behind)
            assert loop.time() - last_progress < STALL_SECONDS, f"no commit past: {behind}"
            await asyncio.sleep(0.5)
    finally:
        await admin.close()

    records = await read_topics(infra.kafka_bootstrap, NAMESPACE)
    assert [r for r in records if r[0] == topics.dead_letters] == []
    # Nothing answered the unknown events either: the only records are the ones we sent.
    assert len(records) == sum(1 for r in records if b"MailboxTeleported" in r[2])
