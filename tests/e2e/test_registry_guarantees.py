"""The registry's guarantees under concurrency, redelivery, expiry and crashes, on real Kafka
and a real MongoDB-protocol server. The tests play link-api, the verifier and billing by
publishing their events directly, so thousands of link requests need no mail server."""

import asyncio
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from localinfra.registry_driver import (
    EventSender,
    MailboxesTopic,
    link_requested,
    owner,
    plan_changed,
    registry_documents,
    verified,
)
from localinfra.services import RunningServices, start_services
from localinfra.stack import Endpoints
from mailbox_link_contract.events import LinkRejected, MailboxLinked, utc_now
from mailbox_link_contract.topics import Topics

from .conftest import service_config
from .probes import read_topics
from .registry_checks import assert_registry_consistent

NAMESPACE = "e2e-registry"


# Two replicas, each with the default pool of connections: the guarantees must not depend on
# one process or one connection serialising the registry's writes.
REPLICAS = 2


def start_registry(
    infra: Endpoints, workdir: Path, namespace: str, replicas: int = REPLICAS, **env: str
) -> RunningServices:
    config = service_config(
        infra,
        namespace=namespace,
        extra_env={
            "MBL_HOUSEKEEPING_INTERVAL_SECONDS": "1",
            "MBL_MONGODB_MAX_POOL_SIZE": "16",
            **env,
        },
    )
    return start_services(
        config, workdir / namespace, modules=("registry",), replicas={"registry": replicas}
    )


@pytest.fixture(scope="module")
def registry(infra: Endpoints, workdir: Path) -> Iterator[RunningServices]:
    running = start_registry(infra, workdir, NAMESPACE)
    try:
        yield running
    finally:
        running.stop()


async def test_one_of_a_thousand_concurrent_requests_for_an_address_links_it(
    registry: RunningServices, infra: Endpoints
) -> None:
    address = "contested@example.org"
    requests = [link_requested(owner(a, f"{a}-{u}"), address) for a in range(50) for u in range(20)]
    # Each request's verification races its request: some arrive first at the registry.
    events = [e for r in requests for e in (r, verified(r))]
    random.shuffle(events)
    async with MailboxesTopic(infra.kafka_bootstrap, NAMESPACE) as topic:
        async with EventSender(infra.kafka_bootstrap, NAMESPACE) as sender:
            await sender.send(events)
        await topic.wait_for_finals([r.data.link_id for r in requests])

    finals = {r.data.link_id: topic.final_events()[r.data.link_id] for r in requests}
    linked = [e for e in finals.values() if isinstance(e, MailboxLinked)]
    rejected = [e for e in finals.values() if isinstance(e, LinkRejected)]
    assert len(linked) == 1
    assert len(rejected) == 999
    assert {e.data.failure.code for e in rejected} == {"already_linked_elsewhere"}
    assert all(len(ids) == 1 for ids in topic.finals().values())
    documents = await registry_documents(infra.mongodb_uri, NAMESPACE)
    assert_registry_consistent(documents)
    [holder] = [d for d in documents["links"] if d["state"] == "linked"]
    assert holder["_id"] == linked[0].data.link_id


async def test_exactly_fifteen_of_two_hundred_concurrent_requests_link_on_a_fifteen_plan(
    registry: RunningServices, infra: Endpoints
) -> None:
    user = owner("big", "one")
    async with httpx.AsyncClient(base_url=registry.registry_url, headers=_auth(registry)) as api:
        plan = await api.put(
            f"/v1/accounts/{user.account_id}/users/{user.user_id}/plan",
            json={"plan": "organization"},
        )
        assert plan.json()["mailbox_limit"] == 15
    requests = [link_requested(user, f"box{i}@fifteen.example.org") for i in range(200)]
    events = [e for r in requests for e in (r, verified(r))]
    random.shuffle(events)
    async with MailboxesTopic(infra.kafka_bootstrap, NAMESPACE) as topic:
        async with EventSender(infra.kafka_bootstrap, NAMESPACE) as sender:
            await sender.send(events)
        await topic.wait_for_finals([r.data.link_id for r in requests])

    finals = [topic.final_events()[r.data.link_id] for r in requests]
    assert sum(isinstance(e, MailboxLinked) for e in finals) == 15
    refused = [e for e in finals if isinstance(e, LinkRejected)]
    assert {e.data.failure.code for e in refused} == {"plan_limit_reached"}
    assert {e.data.plan_limit for e in refused} == {15}
    assert_registry_consistent(await registry_documents(infra.mongodb_uri, NAMESPACE))
    async with httpx.AsyncClient(base_url=registry.registry_url, headers=_auth(registry)) as api:
        listed = await api.get(f"/v1/accounts/{user.account_id}/users/{user.user_id}/mailboxes")
        assert len(listed.json()["mailboxes"]) == 15


async def test_poison_records_go_to_the_dead_letter_topic_and_do_not_block_the_partition(
    infra: Endpoints, workdir: Path
) -> None:
    # A registry of its own: a backlog left by the stress tests must not delay this one.
    namespace = "e2e-registry-poison"
    topics = Topics.for_namespace(namespace)
    address = "after-poison@example.org"
    request = link_requested(owner("dlq", "u"), address)
    future_version = json.loads(link_requested(owner("dlq", "u2"), address).model_dump_json())
    future_version["schema_version"] = 2
    running = start_registry(infra, workdir, namespace)
    try:
        async with MailboxesTopic(infra.kafka_bootstrap, namespace) as topic:
            async with EventSender(infra.kafka_bootstrap, namespace) as sender:
                # Same key, so all three share a partition, the good one last.
                await sender.send_raw(topics.link_requests, address.encode(), b"{not json")
                await sender.send_raw(
                    topics.link_requests, address.encode(), json.dumps(future_version).encode()
                )
                await sender.send([request])
            await _wait_for(topic, request.data.link_id, "LinkReserved", timeout=60)
    finally:
        running.stop()

    dead = [
        r
        for r in await read_topics(infra.kafka_bootstrap, namespace)
        if r[0] == topics.dead_letters
    ]
    assert [value for _, _, value in dead] == [b"{not json", json.dumps(future_version).encode()]
    reasons = await _dead_letter_reasons(infra.kafka_bootstrap, topics.dead_letters)
    assert reasons[0].startswith("undecodable")
    assert "schema_version" in reasons[1]


async def test_reservation_without_an_answer_expires_and_frees_its_slot(
    infra: Endpoints, workdir: Path
) -> None:
    namespace = "e2e-registry-expiry"
    running = start_registry(infra, workdir, namespace, MBL_RESERVATION_TTL_SECONDS="2")
    try:
        user = owner("expiry", "u")
        first = link_requested(user, "first@expiry.example.org")
        second = link_requested(user, "second@expiry.example.org")
        third = link_requested(user, "third@expiry.example.org")
        async with (
            MailboxesTopic(infra.kafka_bootstrap, namespace) as topic,
            EventSender(infra.kafka_bootstrap, namespace) as sender,
        ):
            await sender.send([plan_changed(user, "free", utc_now())])
            await asyncio.sleep(0.5)  # plan changes and requests are on different topics
            await sender.send([first])
            await _wait_for(topic, first.data.link_id, "LinkReserved")
            await sender.send([second])  # the one slot is held by the silent reservation
            await topic.wait_for_finals([second.data.link_id])
            await topic.wait_for_finals([first.data.link_id])
            await sender.send([verified(first), third, verified(third)])  # too late, then anew
            await topic.wait_for_finals([third.data.link_id])
            await asyncio.sleep(1)  # give the late verification time to (not) act

        finals = topic.final_events()
        assert finals[second.data.link_id].data.failure.code == "plan_limit_reached"  # type: ignore[union-attr]
        assert finals[first.data.link_id].data.failure.code == "reservation_expired"  # type: ignore[union-attr]
        assert isinstance(finals[third.data.link_id], MailboxLinked)
        assert all(len(ids) == 1 for ids in topic.finals().values())
        documents = await registry_documents(infra.mongodb_uri, namespace)
        assert_registry_consistent(documents)
        assert [d["state"] for d in documents["links"] if d["_id"] == first.data.link_id] == [
            "rejected"
        ]
    finally:
        running.stop()


def _auth(services: RunningServices) -> dict[str, str]:
    # Plans and force-unlink are the operators' (docs/adr/0017).
    return {"Authorization": f"Bearer {services.operator_token}"}


def _link(event: Any) -> str | None:
    return getattr(event.data, "link_id", None)


async def _wait_for(
    topic: MailboxesTopic, link_id: str, event_type: str, timeout: float = 30
) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not any(e.type == event_type and _link(e) == link_id for e in topic.events):
        assert asyncio.get_running_loop().time() < deadline, f"no {event_type} for {link_id}"
        await asyncio.sleep(0.05)


async def _dead_letter_reasons(bootstrap: str, topic: str) -> list[str]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = [
                TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()
            ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        end = await consumer.end_offsets(partitions)
        records = []
        while [tp for tp in partitions if await consumer.position(tp) < end[tp]]:
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                records.extend(batch)
        records.sort(key=lambda r: (r.partition, r.offset))
        return [dict(r.headers)["dlq-reason"].decode() for r in records]
    finally:
        await consumer.stop()
