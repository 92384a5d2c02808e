"""`make bench`: registry decisions per second and decision latency, beside the raw rate of
the storage server doing the same writes.

1. Maximum rate: a burst of link requests (each a new user and address, so each is reserved:
   the registry's most expensive decision) is published at once; the rate is requests divided
   by the time until the last LinkReserved is on the topic.
2. Latency at 50% of that rate: requests published at a steady pace; for each, the time from
   publishing the LinkRequested to reading its LinkReserved. p50 and p99.
3. Raw storage rate, in the same run: the six writes a reservation makes (link record, address
   lock, plan slot, decision marker, conditional decision, marker removal), issued directly
   with pymongo into the same collections, indexes and connection limit, with as many in
   flight as the registry has, and one at a time; the faster of the two is the raw rate.
Figures go to bench/results/registry-throughput.json.
"""

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from pymongo import AsyncMongoClient, ReturnDocument

from localinfra.mongo import mongo_pool_size
from localinfra.registry_driver import EventSender, link_requested, owner
from localinfra.services import ServiceConfig, start_services
from localinfra.stack import LocalStack
from mailbox_link_contract.topics import Topics
from registry.adapters.registry_store import MongoRegistryStore

RESULTS = Path(__file__).resolve().parent / "results"


class Decisions:
    """Reads LinkReserved events and records when each link's arrived."""

    def __init__(self, bootstrap: str, namespace: str) -> None:
        self.topic = Topics.for_namespace(namespace).mailboxes
        self.bootstrap = bootstrap
        self.decided_at: dict[str, float] = {}
        self.consumer: AIOKafkaConsumer | None = None
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, enable_auto_commit=False, fetch_max_wait_ms=20
        )
        await self.consumer.start()
        await self.consumer._client.force_metadata_update()
        parts = [
            TopicPartition(self.topic, p)
            for p in self.consumer.partitions_for_topic(self.topic) or ()
        ]
        self.consumer.assign(parts)
        await self.consumer.seek_to_end(*parts)
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.consumer is not None
        while True:
            for records in (await self.consumer.getmany(timeout_ms=100)).values():
                now = time.perf_counter()
                for record in records:
                    event = json.loads(record.value or b"{}")
                    if event.get("type") in ("LinkReserved", "LinkRejected"):
                        self.decided_at.setdefault(event["data"]["link_id"], now)

    async def wait_for(self, link_ids: list[str], timeout: float = 300) -> None:
        deadline = time.perf_counter() + timeout
        while any(i not in self.decided_at for i in link_ids):
            if time.perf_counter() > deadline:
                raise TimeoutError("the registry did not decide every request")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
        if self.consumer:
            await self.consumer.stop()


async def registry_max_rate(
    sender: EventSender, decisions: Decisions, count: int, tag: str
) -> float:
    requests = [link_requested(owner(tag, i), f"{tag}-{i}@bench.example.org") for i in range(count)]
    started = time.perf_counter()
    await sender.send(requests)
    await decisions.wait_for([r.data.link_id for r in requests])
    last = max(decisions.decided_at[r.data.link_id] for r in requests)
    return count / (last - started)


async def registry_latency(
    sender: EventSender, decisions: Decisions, rate: float, seconds: float, tag: str
) -> list[float]:
    count = int(rate * seconds)
    sent_at: dict[str, float] = {}
    began = time.perf_counter()
    for i in range(count):
        request = link_requested(owner(tag, i), f"{tag}-{i}@bench.example.org")
        # Paced by the clock, not by the previous send, so a slow send does not lower the load.
        delay = began + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        sent_at[request.data.link_id] = time.perf_counter()
        await sender.send([request])
    await decisions.wait_for(list(sent_at))
    return [decisions.decided_at[i] - t for i, t in sent_at.items()]


async def raw_storage_rate(uri: str, database: str, count: int, in_flight: int) -> float:
    """Does a reservation's six writes per request directly; returns requests per second."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        uri, tz_aware=True, maxPoolSize=mongo_pool_size()
    )
    await MongoRegistryStore(client, database).create_indexes()  # the same indexes
    db = client[database]
    slots = asyncio.Semaphore(in_flight)

    async def reserve(i: int) -> None:
        link_id, address, user = uuid.uuid4().hex, f"raw-{i}@bench.example.org", f"raw\x1f{i}"
        event = json.dumps(
            {"event_id": str(uuid.uuid4()), "type": "LinkReserved", "pad": "x" * 380}
        )
        async with slots:
            now = datetime.now(UTC)
            record: dict[str, Any] = {"_id": link_id, "account_id": "raw", "address": address}
            record.update(user_id=str(i), provider="imap", state="reserving", expires_at=now)
            await db.links.insert_one({**record, "mailbox": None, "outbox": None})
            await db.address_locks.insert_one({"_id": address, "link_id": link_id})
            await db.users.update_one(
                {
                    "_id": user,
                    "plan": None,
                    "held_count": {"$lt": 3},
                    f"held.{link_id}": {"$exists": False},
                },
                {"$set": {f"held.{link_id}": address}, "$inc": {"held_count": 1}},
                upsert=True,
            )
            marker = f"{link_id}/x"
            await db.open_decisions.insert_one(
                {"_id": marker, "link_id": link_id, "opened_at": now}
            )
            await db.links.find_one_and_update(
                {"_id": link_id, "state": {"$in": ["reserving"]}},
                {"$set": {"state": "reserved", "outbox": event}},
                return_document=ReturnDocument.AFTER,
            )
            await db.open_decisions.delete_one({"_id": marker})

    try:
        started = time.perf_counter()
        await asyncio.gather(*(reserve(i) for i in range(count)))
        return count / (time.perf_counter() - started)
    finally:
        await client.drop_database(database)
        await client.close()


async def measure(infra: Any, namespace: str, burst: int, seconds: float) -> dict[str, Any]:
    decisions = Decisions(infra.kafka_bootstrap, namespace)
    await decisions.start()
    try:
        async with EventSender(infra.kafka_bootstrap, namespace) as sender:
            await registry_max_rate(sender, decisions, 100, "warm")
            max_rate = await registry_max_rate(sender, decisions, burst, "burst")
            latencies = await registry_latency(sender, decisions, max_rate / 2, seconds, "steady")
    finally:
        await decisions.stop()
    # The raw rate on an equally full database: the registry's collections hold the runs above.
    raw_concurrent = await raw_storage_rate(infra.mongodb_uri, f"{namespace}-raw-a", burst, 16)
    raw_sequential = await raw_storage_rate(infra.mongodb_uri, f"{namespace}-raw-b", burst, 1)
    raw = max(raw_concurrent, raw_sequential)
    latencies.sort()
    return {
        "registry_max_decisions_per_s": round(max_rate, 1),
        "raw_storage_decisions_per_s": round(raw, 1),
        "raw_storage_concurrent_per_s": round(raw_concurrent, 1),
        "raw_storage_sequential_per_s": round(raw_sequential, 1),
        "registry_to_raw_ratio": round(max_rate / raw, 2),
        "steady_load_per_s": round(max_rate / 2, 1),
        "steady_requests": len(latencies),
        "latency_p50_ms": round(statistics.median(latencies) * 1000, 1),
        "latency_p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 1),
        "latency_max_ms": round(latencies[-1] * 1000, 1),
        "burst_requests": burst,
        "writes_per_decision": 6,
        "mongodb_connections_per_process": mongo_pool_size(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    # FerretDB's cost per write grows with the collection, so each burst size runs on its own
    # fresh database: the figures are given per database size.
    parser.add_argument("--bursts", type=int, nargs="+", default=[200, 1000])
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    stack = LocalStack()
    result: dict[str, Any] = {}
    try:
        infra = stack.start()
        for burst in args.bursts:
            config = ServiceConfig(
                kafka_bootstrap=infra.kafka_bootstrap,
                mongodb_uri=infra.mongodb_uri,
                ca_file=infra.ca_file,
                namespace=f"bench-registry-{burst}",
                log_level="WARNING",
                extra_env={k: v for k, v in os.environ.items() if k.startswith("MBL_")},
            )
            with tempfile.TemporaryDirectory(prefix="mbl-bench-") as logs:
                services = start_services(config, Path(logs), modules=("registry",))
                try:
                    measured = asyncio.run(measure(infra, config.namespace, burst, args.seconds))
                finally:
                    services.stop()
            result[f"burst_{burst}"] = measured
    finally:
        stack.stop()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "registry-throughput.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(f"written to {RESULTS / 'registry-throughput.json'}", file=sys.stderr)


if __name__ == "__main__":
    main()
