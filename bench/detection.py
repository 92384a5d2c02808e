"""`make bench`: provider detection throughput and latency, cold and warm cache, against a
real DNS server (dnsmasq on 127.0.0.1), through the production adapters.

Cold: every address is on a domain never seen before, whose settings come from SRV records
after MX, TXT and both autoconfig lookups came back empty (the longest path). Warm: the same
addresses again, answered from the cache. The warm figure is what detection adds to a link
request that names no servers. Figures go to bench/results/detection.json.
"""

import argparse
import asyncio
import json
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from link_api.adapters.autoconfig import AutoconfigFetcher
from link_api.adapters.detector import Detector
from link_api.adapters.dns_lookup import DnsLookup
from link_api.domain.providers import Provider
from link_api.handlers import settings_for
from localinfra.dns import DnsRecords, DnsServer

RESULTS = Path(__file__).resolve().parent / "results"


def zone(domains: list[str]) -> DnsRecords:
    records = DnsRecords(zones=["bench"])
    for domain in domains:
        records.mx.append((domain, f"mx.{domain}", 10))
        records.srv.append((f"_imaps._tcp.{domain}", f"imap.{domain}", 993, 0))
        records.srv.append((f"_submission._tcp.{domain}", f"smtp.{domain}", 587, 0))
    return records


async def timed(detector: Detector, addresses: list[str], concurrency: int) -> dict[str, Any]:
    slots = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def one(address: str) -> None:
        async with slots:
            started = time.perf_counter()
            detection = await detector.detect(address)
            latencies.append(time.perf_counter() - started)
            if detection.provider is not Provider.IMAP:
                raise RuntimeError(f"{address}: {detection}")

    began = time.perf_counter()
    await asyncio.gather(*(one(a) for a in addresses))
    elapsed = time.perf_counter() - began
    latencies.sort()
    return {
        "detections": len(addresses),
        "concurrency": concurrency,
        "per_s": round(len(addresses) / elapsed, 1),
        "p50_us": round(statistics.median(latencies) * 1e6, 1),
        "p99_us": round(latencies[int(len(latencies) * 0.99) - 1] * 1e6, 1),
    }


async def link_overhead(detector: Detector, addresses: list[str]) -> dict[str, Any]:
    """What a link request without servers pays for them once the domain is cached."""
    latencies = []
    for address in addresses:
        started = time.perf_counter()
        await settings_for(address, None, detector)
        latencies.append(time.perf_counter() - started)
    latencies.sort()
    return {
        "calls": len(latencies),
        "p50_us": round(statistics.median(latencies) * 1e6, 1),
        "p99_us": round(latencies[int(len(latencies) * 0.99) - 1] * 1e6, 1),
    }


async def measure(port: int, domains: list[str]) -> dict[str, Any]:
    def detector() -> Detector:
        dns = DnsLookup([f"127.0.0.1:{port}"], 2.0)
        fetcher = AutoconfigFetcher(dns, (), ssl.create_default_context(), 3.0)
        return Detector(dns, fetcher)

    half = len(domains) // 2
    sequential, concurrent = detector(), detector()
    cold_1 = await timed(sequential, [f"user@{d}" for d in domains[:half]], 1)
    cold_16 = await timed(concurrent, [f"user@{d}" for d in domains[half:]], 16)
    again = [f"other@{d}" for d in domains[:half]]
    warm_1 = await timed(sequential, again * 10, 1)
    warm_16 = await timed(sequential, again * 10, 16)
    return {
        "cold_sequential": cold_1,
        "cold_16_at_a_time": cold_16,
        "warm_sequential": warm_1,
        "warm_16_at_a_time": warm_16,
        "warm_link_request_overhead": await link_overhead(sequential, again * 10),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--domains", type=int, default=400)
    args = parser.parse_args()
    domains = [f"isp{i}.bench" for i in range(args.domains)]
    with tempfile.TemporaryDirectory(prefix="mbl-bench-dns-") as workdir:
        server = DnsServer(Path(workdir), zone(domains))
        try:
            result = asyncio.run(measure(server.start(), domains))
        finally:
            server.stop()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "detection.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(f"written to {RESULTS / 'detection.json'}", file=sys.stderr)


if __name__ == "__main__":
    main()
