"""`make bench`: registry decisions per second with one and with two replicas, decision
latency, and the store round trips a link costs.

For each number of registry replicas (1, then 2), on a fresh namespace:
1. Maximum rate: a burst of link requests (each a new user and address, so each is reserved:
   the registry's most expensive decision) is published at once; the rate is requests divided
   by the time until the last LinkReserved is on the topic.
2. Latency at 50% of that rate: requests published at a steady pace; for each, the time from
   publishing the LinkRequested to reading its LinkReserved. p50 and p99.
Then, in this process, without Kafka: the registry's own handlers on the same store, 16
requests in flight, with every store call counted: round trips per reservation and per
verification, and the rate the store alone allows.
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
from collections import Counter
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from link_throughput import cpu_snapshot, cpu_used, find_roots  # bench/, beside this file
from pymongo import AsyncMongoClient

from localinfra.mongo import mongo_backend
from localinfra.registry_driver import EventSender, link_requested, owner, verified
from localinfra.services import ServiceConfig, start_services
from localinfra.stack import LocalStack
from mailbox_link_contract.topics import Topics
from mailbox_link_shared.publishing import RecordingPublisher
from registry import handlers
from registry.adapters.registry_store import MongoRegistryStore
from registry.domain.plans import DEFAULT_PLANS, PlanTable
from registry.handlers import RegistryDeps

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


class CountingStore:
    """Wraps a store and counts its calls (each one round trip), by method."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._store, name)

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return await method(*args, **kwargs)

        return counted


async def in_process_rate(uri: str, database: str, count: int) -> dict[str, Any]:
    """Reserves then links `count` links with the registry's handlers on the real store (no
    Kafka), 16 at a time; returns round trips per step and links per second."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri, tz_aware=True, maxPoolSize=16)
    store = MongoRegistryStore(client, database)
    await store.create_indexes()
    counting = CountingStore(store)
    plans = PlanTable(DEFAULT_PLANS, "basic")
    deps = RegistryDeps(counting, RecordingPublisher(), plans)
    requests = [
        link_requested(owner("inproc", i), f"inproc-{i}@bench.example.org") for i in range(count)
    ]
    slots = asyncio.Semaphore(16)

    async def reserve(request: Any) -> None:
        async with slots:
            await handlers.when_link_requested_reserve(request, deps)

    async def link(request: Any) -> None:
        async with slots:
            await handlers.when_mailbox_verified_link(verified(request), deps)

    try:
        started = time.perf_counter()
        await asyncio.gather(*(reserve(r) for r in requests))
        reserve_calls, counting.calls = counting.calls, Counter()
        await asyncio.gather(*(link(r) for r in requests))
        elapsed = time.perf_counter() - started
        link_calls = counting.calls
    finally:
        await client.drop_database(database)
        await client.close()
    return {
        "links_per_s": round(count / elapsed, 1),
        "round_trips_per_reservation": round(sum(reserve_calls.values()) / count, 2),
        "round_trips_per_verification": round(sum(link_calls.values()) / count, 2),
        "reservation_calls": {k: round(v / count, 2) for k, v in sorted(reserve_calls.items())},
        "verification_calls": {k: round(v / count, 2) for k, v in sorted(link_calls.items())},
    }


async def measure(
    infra: Any, namespace: str, burst: int, seconds: float, roots: dict[str, int]
) -> dict[str, Any]:
    decisions = Decisions(infra.kafka_bootstrap, namespace)
    await decisions.start()
    try:
        async with EventSender(infra.kafka_bootstrap, namespace) as sender:
            await registry_max_rate(sender, decisions, 100, "warm")
            before = cpu_snapshot(roots)
            max_rate = await registry_max_rate(sender, decisions, burst, "burst")
            used = cpu_used(before, cpu_snapshot(roots))
            latencies = await registry_latency(sender, decisions, max_rate / 2, seconds, "steady")
    finally:
        await decisions.stop()
    latencies.sort()
    # CPU of each process during the burst, per decision (the burst's tail of idle waiting
    # for the last event is included, so these are upper bounds).
    cpu = {name: round(1000 * value / burst, 2) for name, value in sorted(used.items())}
    return {
        "cpu_ms_per_decision_in_burst": cpu,
        "registry_max_decisions_per_s": round(max_rate, 1),
        "steady_load_per_s": round(max_rate / 2, 1),
        "steady_requests": len(latencies),
        "latency_p50_ms": round(statistics.median(latencies) * 1000, 1),
        "latency_p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 1),
        "latency_max_ms": round(latencies[-1] * 1000, 1),
        "burst_requests": burst,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--burst", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    stack = LocalStack()
    result: dict[str, Any] = {"store": mongo_backend(), "nproc": os.cpu_count()}
    try:
        infra = stack.start()
        for replicas in args.replicas:
            config = ServiceConfig(
                kafka_bootstrap=infra.kafka_bootstrap,
                mongodb_uri=infra.mongodb_uri,
                ca_file=infra.ca_file,
                namespace=f"bench-registry-x{replicas}",
                log_level="WARNING",
                extra_env={k: v for k, v in os.environ.items() if k.startswith("MBL_")},
            )
            with tempfile.TemporaryDirectory(prefix="mbl-bench-") as logs:
                services = start_services(
                    config, Path(logs), modules=("registry",), replicas={"registry": replicas}
                )
                roots = find_roots(services, infra.workdir)
                try:
                    measured = asyncio.run(
                        measure(infra, config.namespace, args.burst, args.seconds, roots)
                    )
                finally:
                    services.stop()
            result[f"replicas_{replicas}"] = measured
        result["in_process"] = asyncio.run(in_process_rate(infra.mongodb_uri, "bench-inproc", 500))
    finally:
        stack.stop()
    if "replicas_1" in result and "replicas_2" in result:
        one, two = (result[f"replicas_{n}"]["registry_max_decisions_per_s"] for n in (1, 2))
        result["two_replicas_to_one"] = round(two / one, 2)
        result["target_two_replicas_at_least_1_6x"] = "met" if two / one >= 1.6 else "not met"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "registry-throughput.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(f"written to {RESULTS / 'registry-throughput.json'}", file=sys.stderr)


if __name__ == "__main__":
    main()
