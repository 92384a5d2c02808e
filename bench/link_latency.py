"""`make bench`: end-to-end link latency against the bare verification it is built on.

Starts the real stack and services, then for each mailbox alternates (a) one link through
HTTP -> Kafka -> verifier -> registry -> link-api, timed from just before the POST to the
moment link-api recorded `linked`, and (b) the same IMAP+SMTP checks done directly with the
verifier's probes, both concurrently (as the verifier does) and one after the other. Alternating
keeps machine noise from favouring either side. Figures go to bench/results/.

`--tracing compare` (issue 16) instead runs two service sets on the same stack, one exporting
traces to a real OpenTelemetry collector and one without, links one mailbox at a time taking
turns between them, and reports each set's latency and CPU per link, then what a Prometheus
scrape of /metrics costs each service; `--before PYTHON` adds a third set, the services of an
older checkout (the commit before issue 16) run by that interpreter, taking its turn too.
Figures go to bench/results/link-latency-tracing.json.
"""

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import ssl
import statistics
import sys
import tempfile
import time
import unittest.mock
from collections.abc import Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from link_throughput import link_body, read_all_procs, tree_ticks  # bench/, beside this file

from localinfra import services as local_services
from localinfra.otel_collector import RunningCollector, running_collector
from localinfra.services import RunningServices, ServiceConfig, start_services
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


# ---- --tracing compare (issue 16) ----------------------------------------------------------

SETS = ("tracing_on", "tracing_off")
BEFORE = "before_issue_16"  # --before: the services of an older checkout, tracing off
# The BatchSpanProcessor exports every 5 s: the window stays open that long after the last
# link, so the export of its spans is inside it (both sets idle alike meanwhile).
EXPORT_TAIL_S = 6.0
IDLE_S = 10.0  # CPU is counted in 10 ms ticks: long enough for a steady idle rate
SCRAPE_INTERVAL_S = 15.0  # Prometheus' default, to turn a scrape's CPU into a rate


def namespace_of(services: RunningServices) -> str:
    return (services.processes[0].env or {})["MBL_NAMESPACE"]


def set_roots(services: RunningServices) -> dict[str, int]:
    return {p.name: p.pid for p in services.processes if p.pid is not None}


def snapshot(groups: Mapping[str, Mapping[str, int]]) -> dict[str, dict[str, float]]:
    """CPU seconds so far of each process tree (utime+stime, reaped children included)."""
    hz = os.sysconf("SC_CLK_TCK")
    procs = read_all_procs()
    return {
        g: {n: tree_ticks(pid, procs) / hz for n, pid in roots.items()}
        for g, roots in groups.items()
    }


def used_between(
    before: Mapping[str, Mapping[str, float]], after: Mapping[str, Mapping[str, float]]
) -> dict[str, dict[str, float]]:
    return {g: {n: after[g][n] - before[g][n] for n in before[g]} for g in before}


async def compare_tracing(
    infra: Endpoints,
    sets: Mapping[str, RunningServices],
    collector: RunningCollector,
    users: list[tuple[str, str]],
    links: int,
    warmup: int,
) -> dict[str, Any]:
    """Links one mailbox at a time, the sets taking turns (which goes first rotates every
    round); CPU of each set's processes over the whole measured window."""
    tls = ssl.create_default_context(cafile=infra.ca_file)
    for address, password in users:
        await bare_checks(infra, tls, address, password)  # Dovecot creates the mailbox once
    groups: dict[str, dict[str, int]] = {name: set_roots(s) for name, s in sets.items()}
    if collector.process.pid is not None:
        groups["collector"] = {"otelcol": collector.process.pid}
    await asyncio.sleep(1.0)  # the first logins' workers exit
    began, before = time.monotonic(), snapshot(groups)
    await asyncio.sleep(IDLE_S)
    idle = used_between(before, snapshot(groups))
    idle_rate = {g: sum(v.values()) / (time.monotonic() - began) for g, v in idle.items()}
    samples: dict[str, list[float]] = {name: [] for name in sets}
    starts: dict[str, dict[str, float]] = {name: {} for name in sets}
    pool = iter(users)
    async with contextlib.AsyncExitStack() as exits:
        apis = {
            name: await exits.enter_async_context(
                httpx.AsyncClient(
                    base_url=s.api_url,
                    headers={"Authorization": f"Bearer {s.caller_token}"},
                    timeout=TIMEOUT,
                )
            )
            for name, s in sets.items()
        }
        opened, before = time.monotonic(), snapshot(groups)
        for round_ in range(warmup + links):
            if round_ == warmup:
                opened, before = time.monotonic(), snapshot(groups)
            counted = round_ >= warmup
            names = list(sets)
            # Each set goes first, second, ... in turn: noise favours none.
            for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
                address, password = next(pool)
                moments = starts[name] if counted else {}  # warm-ups are not among the hops
                seconds = await one_link(apis[name], infra, address, password, moments)
                if counted:
                    samples[name].append(seconds)
        await asyncio.sleep(EXPORT_TAIL_S)
        window = used_between(before, snapshot(groups))
        length = time.monotonic() - opened
    figures: dict[str, Any] = {"window_s": round(length, 1), "sets": {}}
    for name in sets:
        cpu, count = window[name], len(samples[name])
        total = sum(cpu.values())
        figures["sets"][name] = {
            "namespace": namespace_of(sets[name]),
            "links": count,
            "median_ms": round(statistics.median(samples[name]) * 1000, 1),
            "p90_ms": round(statistics.quantiles(samples[name], n=10)[-1] * 1000, 1),
            "idle_cpu_ms_per_s": round(idle_rate[name] * 1000, 1),
            "cpu_ms_per_link": {
                **{n: round(v * 1000 / count, 1) for n, v in cpu.items()},
                "services": round(total * 1000 / count, 1),
            },
            "cpu_ms_per_link_above_idle": round(
                (total - idle_rate[name] * length) * 1000 / count, 1
            ),
            "hop_median_ms": await hop_times(
                infra.kafka_bootstrap, namespace_of(sets[name]), starts[name]
            ),
            "samples_s": samples[name],
        }
    on, off = figures["sets"]["tracing_on"], figures["sets"]["tracing_off"]
    figures["ratios_on_to_off"] = {
        "median": round(on["median_ms"] / off["median_ms"], 3),
        "p90": round(on["p90_ms"] / off["p90_ms"], 3),
        "cpu_per_link": round(
            on["cpu_ms_per_link"]["services"] / off["cpu_ms_per_link"]["services"], 3
        ),
        "cpu_per_link_above_idle": round(
            on["cpu_ms_per_link_above_idle"] / off["cpu_ms_per_link_above_idle"], 3
        ),
    }
    # Both sets ran through the same window, idle alike: the difference is what tracing costs.
    figures["cpu_ms_per_link_on_minus_off"] = round(
        on["cpu_ms_per_link"]["services"] - off["cpu_ms_per_link"]["services"], 1
    )
    if BEFORE in figures["sets"]:
        # Issue 16 with tracing off against the commit before it: metrics, health and the rest.
        before = figures["sets"][BEFORE]
        figures["ratios_off_to_before"] = {
            "median": round(off["median_ms"] / before["median_ms"], 3),
            "p90": round(off["p90_ms"] / before["p90_ms"], 3),
            "cpu_per_link": round(
                off["cpu_ms_per_link"]["services"] / before["cpu_ms_per_link"]["services"], 3
            ),
            "cpu_per_link_above_idle": round(
                off["cpu_ms_per_link_above_idle"] / before["cpu_ms_per_link_above_idle"], 3
            ),
        }
    spans = collector.spans()
    on_links = warmup + links
    figures["collector"] = {
        "spans_received": len(spans),
        "spans_per_link": round(len(spans) / on_links, 1),  # warm-ups and start-up included
        "cpu_ms_per_link": round(sum(window.get("collector", {}).values()) * 1000 / on["links"], 1),
        "note": "the collector is not ours: its CPU is apart from the sets'",
    }
    return figures


async def scrape_cost(services: RunningServices, scrapes: int) -> dict[str, Any]:
    """CPU each service spends answering one Prometheus scrape of /metrics, one at a time,
    less its idle rate (measured for 2 s just before), and what a scrape weighs."""
    hz = os.sysconf("SC_CLK_TCK")

    def ticks(pid: int) -> float:
        return tree_ticks(pid, read_all_procs()) / hz

    result: dict[str, Any] = {}
    for process in services.processes:
        if process.pid is None or process.env is None:
            continue
        url = f"http://127.0.0.1:{process.env['MBL_HTTP_PORT']}/metrics"
        # Prometheus' own Accept and Accept-Encoding, so the answer is what a scrape gets.
        headers = {
            "Accept": "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
            "Accept-Encoding": "gzip",
        }
        async with httpx.AsyncClient(timeout=TIMEOUT, headers=headers) as client:
            first = await client.get(url)
            first.raise_for_status()
            began, before = time.monotonic(), ticks(process.pid)
            await asyncio.sleep(2.0)
            idle_rate = (ticks(process.pid) - before) / (time.monotonic() - began)
            sizes, wire, times = [], [], []
            began, before = time.monotonic(), ticks(process.pid)
            for _ in range(scrapes):
                started = time.perf_counter()
                response = await client.get(url)
                response.raise_for_status()
                times.append(time.perf_counter() - started)
                sizes.append(len(response.content))
                wire.append(response.num_bytes_downloaded)
            elapsed, cpu = time.monotonic() - began, ticks(process.pid) - before
        above = (cpu - idle_rate * elapsed) * 1000 / scrapes
        series = [line for line in response.text.splitlines() if line and not line.startswith("#")]
        result[process.name] = {
            "scrapes": scrapes,
            "cpu_ms_per_scrape": round(cpu * 1000 / scrapes, 2),
            "cpu_ms_per_scrape_above_idle": round(above, 2),
            "cpu_ms_per_s_at_15s_interval": round(above / SCRAPE_INTERVAL_S, 3),
            "bytes_per_scrape": round(statistics.median(sizes)),
            "bytes_on_the_wire": round(statistics.median(wire)),
            "content_type": response.headers.get("content-type", ""),
            "samples_per_scrape": len(series),
            "median_ms": round(statistics.median(times) * 1000, 2),
            "idle_cpu_ms_per_s": round(idle_rate * 1000, 1),
        }
    return result


@contextlib.contextmanager
def older_services(python: Path) -> Iterator[None]:
    """Makes start_services run the services of another checkout (its venv's interpreter),
    which predate /readyz: they serve HTTP only once started, so /healthz stands in."""

    def answers(url: str) -> bool:
        return original(url.replace("/readyz", "/healthz"))

    original = local_services._answers
    with (
        unittest.mock.patch.object(sys, "executable", str(python)),
        unittest.mock.patch.object(local_services, "_answers", answers),
    ):
        yield


def run_compare(args: argparse.Namespace) -> dict[str, Any]:
    """Both sets on one stack; the tracing set exports to a real collector."""
    per_set = args.links + args.warmup
    users = [
        (f"bench-{i}-{secrets.token_hex(3)}@example.org", secrets.token_urlsafe(12))
        for i in range((3 if args.before else 2) * per_set)
    ]
    load = os.getloadavg()
    stack = LocalStack()
    for address, password in users:
        stack.add_mail_user(address, password)
    try:
        infra = stack.start()
        with (
            running_collector() as collector,
            tempfile.TemporaryDirectory(prefix="mbl-bench-") as logs,
        ):
            sets: dict[str, RunningServices] = {}
            endpoint = {"tracing_on": collector.endpoint, "tracing_off": ""}
            try:
                for name in [*SETS, *([BEFORE] if args.before else [])]:
                    config = ServiceConfig(
                        kafka_bootstrap=infra.kafka_bootstrap,
                        mongodb_uri=infra.mongodb_uri,
                        ca_file=infra.ca_file,
                        dns_servers=(infra.dns_server,),
                        ownership_relay_port=infra.relay_port,
                        namespace=f"bench-{name.replace('_', '-')}",
                        log_level="WARNING",
                        # Set on both, so an OTEL_ variable of the caller's shell decides nothing.
                        extra_env={
                            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint.get(name, ""),
                            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "",
                        },
                    )
                    workdir = Path(logs) / name
                    workdir.mkdir()
                    if name == BEFORE:
                        with older_services(args.before):
                            sets[name] = start_services(config, workdir)
                    else:
                        sets[name] = start_services(config, workdir)
                figures = asyncio.run(
                    compare_tracing(infra, sets, collector, users, args.links, args.warmup)
                )
                figures["metrics_scrape"] = asyncio.run(
                    scrape_cost(sets["tracing_off"], args.scrapes)
                )
            finally:
                for services in sets.values():
                    services.stop()
    finally:
        stack.stop()
    return {
        "nproc": os.cpu_count(),
        "load_average_at_start": [round(v, 2) for v in load],
        "links_per_set": args.links,
        "warmup_per_set": args.warmup,
        **figures,
    }


def print_compare(result: dict[str, Any]) -> None:
    on, off = result["sets"]["tracing_on"], result["sets"]["tracing_off"]
    ratios = result["ratios_on_to_off"]
    rows = [
        ("end to end median ms", on["median_ms"], off["median_ms"], ratios["median"]),
        ("end to end p90 ms", on["p90_ms"], off["p90_ms"], ratios["p90"]),
        (
            "CPU ms per link, our services",
            on["cpu_ms_per_link"]["services"],
            off["cpu_ms_per_link"]["services"],
            ratios["cpu_per_link"],
        ),
        (
            "  the same, above idle",
            on["cpu_ms_per_link_above_idle"],
            off["cpu_ms_per_link_above_idle"],
            ratios["cpu_per_link_above_idle"],
        ),
        ("idle CPU ms/s, our services", on["idle_cpu_ms_per_s"], off["idle_cpu_ms_per_s"], ""),
    ]
    print(f"{'':32} {'tracing on':>11} {'off':>11} {'on/off':>7}")
    for label, a, b, r in rows:
        print(f"{label:32} {a:>11} {b:>11} {r!s:>7}")
    print(f"tracing's CPU per link (on - off): {result['cpu_ms_per_link_on_minus_off']} ms")
    if "ratios_off_to_before" in result:
        before, ratios = result["sets"][BEFORE], result["ratios_off_to_before"]
        print(f"{'':32} {'before':>11} {'after, off':>11} {'ratio':>7}")
        for label, key, a, b in (
            ("end to end median ms", "median", before["median_ms"], off["median_ms"]),
            ("end to end p90 ms", "p90", before["p90_ms"], off["p90_ms"]),
            (
                "CPU ms per link, our services",
                "cpu_per_link",
                before["cpu_ms_per_link"]["services"],
                off["cpu_ms_per_link"]["services"],
            ),
            (
                "  the same, above idle",
                "cpu_per_link_above_idle",
                before["cpu_ms_per_link_above_idle"],
                off["cpu_ms_per_link_above_idle"],
            ),
        ):
            print(f"{label:32} {a:>11} {b:>11} {ratios[key]!s:>7}")
    collector = result["collector"]
    print(
        f"collector: {collector['spans_per_link']} spans per link, "
        f"{collector['cpu_ms_per_link']} ms CPU per link"
    )
    print(
        f"{'one /metrics scrape':20} {'CPU ms':>7} {'above idle':>10} {'bytes':>7} {'samples':>7}"
    )
    for name, scrape in result["metrics_scrape"].items():
        print(
            f"{name:20} {scrape['cpu_ms_per_scrape']:>7}"
            f" {scrape['cpu_ms_per_scrape_above_idle']:>10}"
            f" {scrape['bytes_per_scrape']:>7} {scrape['samples_per_scrape']:>7}"
        )
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--links", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--tracing",
        choices=("off", "compare"),
        default="off",
        help="compare: a set with tracing on and one without, on one stack, links alternating",
    )
    parser.add_argument("--scrapes", type=int, default=200, help="/metrics scrapes per service")
    parser.add_argument(
        "--before",
        type=Path,
        default=None,
        help="with --tracing compare: a third set, started with this interpreter (an older "
        "checkout's .venv/bin/python), tracing off",
    )
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    if args.tracing == "compare":
        output = args.output or RESULTS / "link-latency-tracing.json"
        result = run_compare(args)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(result, indent=2))
        print_compare(result)
        print(f"written to {output}", file=sys.stderr)
        return
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
    output = args.output or RESULTS / "link-latency.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"summary": result, "samples_s": figures}, indent=2))
    print(json.dumps(result, indent=2))
    print(f"written to {output}", file=sys.stderr)


if __name__ == "__main__":
    main()
