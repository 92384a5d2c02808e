"""`make bench`: end-to-end link latency against the bare verification it is built on.

Starts the real stack and services, then for each mailbox alternates (a) one link through
HTTP -> Kafka -> verifier -> registry -> link-api, timed from just before the POST to the
moment link-api recorded `linked`, and (b) the same IMAP+SMTP checks done directly with the
verifier's probes, both concurrently (as the verifier does) and one after the other. Alternating
keeps machine noise from favouring either side. Figures go to bench/results/.
"""

import argparse
import asyncio
import json
import secrets
import ssl
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from link_throughput import link_body  # bench/, beside this file

from localinfra.services import ServiceConfig, start_services
from localinfra.stack import Endpoints, LocalStack
from mailbox_link_contract.topics import Topics
from mailbox_link_contract.values import ConnectionSecurity
from mailbox_link_shared.mail_probes import Endpoint, probe_imap, probe_smtp

RESULTS = Path(__file__).resolve().parent / "results"
TIMEOUT = 10.0


async def one_link(
    api: httpx.AsyncClient, infra: Endpoints, address: str, password: str, starts: dict[str, float]
) -> float:
    """Links one mailbox; returns seconds from the POST to link-api recording it linked (and
    notes when it started, by link id, in `starts`)."""
    body = link_body(infra, address, password)
    user = f"bench-{secrets.token_hex(4)}"
    started = time.time()
    accepted = (await api.post(f"/v1/accounts/bench/users/{user}/links", json=body)).json()
    starts[accepted["link_id"]] = started
    # Latency comes from link-api's own timestamp, so polling affects only the load: the first
    # look comes after the usual link time, so polls do not compete for these 2 cores with the
    # very path being measured.
    await asyncio.sleep(0.15)
    while True:
        link = (await api.get(accepted["status_url"])).json()
        if link["status"] == "linked":
            starts[f"{accepted['link_id']}/linked"] = datetime.fromisoformat(
                link["updated_at"]
            ).timestamp()
            return datetime.fromisoformat(link["updated_at"]).timestamp() - started
        if link["status"] == "failed":
            raise RuntimeError(f"bench link failed: {link['failure']}")
        await asyncio.sleep(0.025)


async def bare_checks(
    infra: Endpoints, tls: ssl.SSLContext, address: str, password: str
) -> tuple[float, float]:
    """Returns seconds for IMAP+SMTP checks run concurrently, then one after the other."""
    imap = Endpoint(infra.tls_hostname, infra.mail_host, infra.imaps_port, ConnectionSecurity.SSL)
    smtp = Endpoint(
        infra.tls_hostname, infra.mail_host, infra.submissions_port, ConnectionSecurity.SSL
    )
    started = time.perf_counter()
    await asyncio.gather(
        probe_imap(imap, address, password, tls, TIMEOUT),
        probe_smtp(smtp, address, password, tls, TIMEOUT),
    )
    concurrent = time.perf_counter() - started
    started = time.perf_counter()
    await probe_imap(imap, address, password, tls, TIMEOUT)
    await probe_smtp(smtp, address, password, tls, TIMEOUT)
    return concurrent, time.perf_counter() - started


async def measure(
    infra: Endpoints, api_url: str, token: str, users: list[tuple[str, str]], warmup: int
) -> tuple[dict[str, list[float]], dict[str, float]]:
    tls = ssl.create_default_context(cafile=infra.ca_file)
    figures: dict[str, list[float]] = {
        "end_to_end": [],
        "bare_concurrent": [],
        "bare_sequential": [],
    }
    headers = {"Authorization": f"Bearer {token}"}
    starts: dict[str, float] = {}
    counted: set[str] = set()
    for address, password in users:
        # A real mailbox already exists; Dovecot creates one on first login, so log in once
        # first, or the first side measured for each user would also pay for creating it.
        await bare_checks(infra, tls, address, password)
    async with httpx.AsyncClient(base_url=api_url, headers=headers, timeout=TIMEOUT) as api:
        for index, (address, password) in enumerate(users):
            linked = await one_link(api, infra, address, password, starts)
            concurrent, sequential = await bare_checks(infra, tls, address, password)
            if index >= warmup:
                figures["end_to_end"].append(linked)
                figures["bare_concurrent"].append(concurrent)
                figures["bare_sequential"].append(sequential)
            else:  # a warm-up: not among the hops either
                warm = [k for k in starts if k not in counted]
                for key in warm:
                    del starts[key]
            counted = set(starts)
    return figures, starts


HOPS = {
    "post_to_link_requested": ("post", "LinkRequested"),
    "link_requested_to_link_reserved": ("LinkRequested", "LinkReserved"),
    "link_requested_to_mailbox_verified": ("LinkRequested", "MailboxVerified"),
    "last_of_reserved_and_verified_to_mailbox_linked": ("ready", "MailboxLinked"),
    "mailbox_linked_to_link_api_linked": ("MailboxLinked", "linked"),
}


async def hop_times(bootstrap: str, namespace: str, starts: dict[str, float]) -> dict[str, Any]:
    """Medians of each hop, from the records' own timestamps (set by their producers)."""
    topics = Topics.for_namespace(namespace)
    names = [topics.link_requests, topics.verifications, topics.mailboxes]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    moments: dict[str, dict[str, float]] = {}
    try:
        parts = [TopicPartition(t, p) for t in names for p in await _partitions(consumer, t)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        end = await consumer.end_offsets(parts)
        while [tp for tp in parts if await consumer.position(tp) < end[tp]]:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    event = json.loads(record.value or b"{}")
                    link = moments.setdefault(event["data"]["link_id"], {})
                    link.setdefault(event["type"], record.timestamp / 1000)
    finally:
        await consumer.stop()
    hops: dict[str, list[float]] = {name: [] for name in HOPS}
    for link_id, seen in moments.items():
        if link_id not in starts or f"{link_id}/linked" not in starts:
            continue
        seen = {**seen, "post": starts[link_id], "linked": starts[f"{link_id}/linked"]}
        seen["ready"] = max(seen.get("LinkReserved", 0.0), seen.get("MailboxVerified", 0.0))
        for name, (start, end_) in HOPS.items():
            if start in seen and end_ in seen:
                hops[name].append(seen[end_] - seen[start])
    return {
        name: round(statistics.median(values) * 1000, 1) for name, values in hops.items() if values
    }


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    await consumer._client.force_metadata_update()
    return set(consumer.partitions_for_topic(topic) or ())


def summary(
    figures: dict[str, list[float]], started_in: float, services_in: float
) -> dict[str, Any]:
    med = {name: statistics.median(values) for name, values in figures.items()}
    p90 = {name: statistics.quantiles(values, n=10)[-1] for name, values in figures.items()}
    return {
        "links": len(figures["end_to_end"]),
        "infrastructure_start_s": round(started_in, 2),
        "services_start_s": round(services_in, 2),
        "median_ms": {k: round(v * 1000, 1) for k, v in med.items()},
        "p90_ms": {k: round(v * 1000, 1) for k, v in p90.items()},
        "ratio_e2e_to_bare_concurrent": round(med["end_to_end"] / med["bare_concurrent"], 2),
        "ratio_e2e_to_bare_sequential": round(med["end_to_end"] / med["bare_sequential"], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--links", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    users = [
        (f"bench-{i}-{secrets.token_hex(3)}@example.org", secrets.token_urlsafe(12))
        for i in range(args.links + args.warmup)
    ]
    stack = LocalStack()
    for address, password in users:
        stack.add_mail_user(address, password)  # before start: no reload wait during the run
    try:
        infra = stack.start()
        began = time.monotonic()
        config = ServiceConfig(
            kafka_bootstrap=infra.kafka_bootstrap,
            mongodb_uri=infra.mongodb_uri,
            ca_file=infra.ca_file,
            # The stack's DNS (example.org's SRV: published settings) and relay, as `make run`.
            dns_servers=(infra.dns_server,),
            ownership_relay_port=infra.relay_port,
            namespace="bench",
            log_level="WARNING",
        )
        with tempfile.TemporaryDirectory(prefix="mbl-bench-") as logs:
            services = start_services(config, Path(logs))
            services_in = time.monotonic() - began
            try:
                figures, starts = asyncio.run(
                    measure(infra, services.api_url, services.caller_token, users, args.warmup)
                )
                hops = asyncio.run(hop_times(infra.kafka_bootstrap, config.namespace, starts))
            finally:
                services.stop()
    finally:
        stack.stop()
    result = summary(figures, infra.started_in_seconds, services_in)
    result["hop_median_ms"] = hops
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "link-latency.json").write_text(
        json.dumps({"summary": result, "samples_s": figures}, indent=2)
    )
    print(json.dumps(result, indent=2))
    print(f"written to {RESULTS / 'link-latency.json'}", file=sys.stderr)


if __name__ == "__main__":
    main()
