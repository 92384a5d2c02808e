"""`make bench`: how soon the services are ready again, and link again, after an outage.

On a private stack with the four services running, Kafka is stopped (`--outages` times), then
the MongoDB-protocol server; each outage lasts until every service's /readyz answers 503, plus
`--down` seconds. Timed for each: the server's own start (until it answers), from that start's
return until every service's /readyz answers 200, and from there until the first new link
(POSTed at that moment, retried on 503) is `linked` by link-api's own `updated_at`. Medians go
to bench/results/outage-recovery.json, every sample too. A third series stops Kafka again
and starts link-api anew during each outage (a pod rescheduled meanwhile): its start-up hooks
retry with back-off, so it turns ready later than services that ran throughout.
"""

import argparse
import asyncio
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from link_throughput import link_body  # bench/, beside this file

from localinfra.mongo import mongo_backend
from localinfra.services import RunningServices, ServiceConfig, start_services
from localinfra.stack import Endpoints, LocalStack

RESULTS = Path(__file__).resolve().parent / "results"
POLL_S = 0.1  # /readyz answers are cached for 1 s (health.CACHE_SECONDS): the real resolution
TURN_S = 180.0  # a generous bound for a busy 2-core machine
TIMEOUT = 10.0
KAFKA_RESTARTED = "kafka_link_api_started_during_outage"


def health_urls(services: RunningServices) -> dict[str, str]:
    return {
        p.name: f"http://127.0.0.1:{p.env['MBL_HTTP_PORT']}"
        for p in services.processes
        if p.env is not None
    }


async def _status(client: httpx.AsyncClient, url: str) -> int:
    try:
        return (await client.get(url)).status_code
    except httpx.TransportError:
        return 0


async def wait_all(urls: Mapping[str, str], path: str, wanted: int) -> float:
    """Polls `path` on every service until each has answered `wanted`; returns the seconds."""
    began = time.monotonic()
    pending = dict(urls)
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        while pending:
            names = list(pending)
            codes = await asyncio.gather(*(_status(client, pending[n] + path) for n in names))
            for name, code in zip(names, codes, strict=True):
                if code == wanted:
                    del pending[name]
            if not pending:
                break
            if time.monotonic() - began > TURN_S:
                raise RuntimeError(f"{path} not {wanted} after {TURN_S} s on {sorted(pending)}")
            await asyncio.sleep(POLL_S)
    return time.monotonic() - began


async def link_now(services: RunningServices, body: dict[str, Any]) -> tuple[float, int]:
    """POSTs a link (again after a 503) and polls it; returns seconds from the first POST to
    link-api's `updated_at` of `linked`, and the POSTs it took."""
    headers = {"Authorization": f"Bearer {services.caller_token}"}
    path = f"/v1/accounts/bench/users/outage-{secrets.token_hex(4)}/links"
    async with httpx.AsyncClient(
        base_url=services.api_url, headers=headers, timeout=TIMEOUT
    ) as api:
        started, posts = time.time(), 0
        while True:
            posts += 1
            response = await api.post(path, json=body)
            if response.status_code == 202:
                break
            if response.status_code != 503 or time.time() - started > TURN_S:
                raise RuntimeError(f"POST /links: {response.status_code} {response.text}")
            await asyncio.sleep(0.2)
        status_url = response.json()["status_url"]
        while time.time() - started < TURN_S:
            link = (await api.get(status_url)).json()
            if link["status"] == "linked":
                return datetime.fromisoformat(link["updated_at"]).timestamp() - started, posts
            if link["status"] == "failed":
                raise RuntimeError(f"the first link after the outage failed: {link['failure']}")
            await asyncio.sleep(0.05)
    raise RuntimeError(f"the first link after the outage did not end in {TURN_S} s")


def one_outage(
    stop: Callable[[], None],
    start: Callable[[], None],
    services: RunningServices,
    body: dict[str, Any],
    down: float,
    restart_during: str = "",
) -> dict[str, Any]:
    urls = health_urls(services)
    stop()
    not_ready = asyncio.run(wait_all(urls, "/readyz", 503))
    time.sleep(down)
    if restart_during:
        # As a pod (re)started during the outage: its start-up retries with back-off.
        services.kill(restart_during)
        services.restart(restart_during, wait_for="/livez")
    began = time.monotonic()
    start()
    restart = time.monotonic() - began
    ready = asyncio.run(wait_all(urls, "/readyz", 200))
    linked, posts = asyncio.run(link_now(services, body))
    return {
        "all_not_ready_after_stop_s": round(not_ready, 2),
        "server_start_s": round(restart, 2),
        "ready_after_start_s": round(ready, 2),
        "first_link_after_ready_s": round(linked, 3),
        "posts_for_first_link": posts,
    }


def medians(samples: list[dict[str, Any]]) -> dict[str, float]:
    keys = [k for k in samples[0] if k != "posts_for_first_link"]
    return {k: round(statistics.median(s[k] for s in samples), 2) for k in keys}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--outages", type=int, default=3, help="outages of each server")
    parser.add_argument("--down", type=float, default=5.0, help="seconds away once all 503")
    parser.add_argument("--output", type=Path, default=RESULTS / "outage-recovery.json")
    args = parser.parse_args()
    users = [
        (f"outage-{i}-{secrets.token_hex(3)}@example.org", secrets.token_urlsafe(12))
        for i in range(3 * args.outages + 1)
    ]
    load = os.getloadavg()
    stack = LocalStack()
    for address, password in users:
        stack.add_mail_user(address, password)
    samples: dict[str, list[dict[str, Any]]] = {"kafka": [], "mongodb": [], KAFKA_RESTARTED: []}
    try:
        infra: Endpoints = stack.start()
        config = ServiceConfig(
            kafka_bootstrap=infra.kafka_bootstrap,
            mongodb_uri=infra.mongodb_uri,
            ca_file=infra.ca_file,
            dns_servers=(infra.dns_server,),
            ownership_relay_port=infra.relay_port,
            namespace="bench-outage",
            log_level="WARNING",
        )
        bodies = iter(link_body(infra, address, password) for address, password in users)
        with tempfile.TemporaryDirectory(prefix="mbl-bench-") as logs:
            services = start_services(config, Path(logs))
            try:
                asyncio.run(link_now(services, next(bodies)))  # a warm-up: the path works
                for kind, stop, start, restarted in (
                    ("kafka", stack.stop_kafka, stack.start_kafka, ""),
                    ("mongodb", stack.stop_mongo, stack.start_mongo, ""),
                    (KAFKA_RESTARTED, stack.stop_kafka, stack.start_kafka, "link_api"),
                ):
                    for number in range(args.outages):
                        body = next(bodies)
                        sample = one_outage(stop, start, services, body, args.down, restarted)
                        print(f"{kind} outage {number + 1}: {sample}", file=sys.stderr, flush=True)
                        samples[kind].append(sample)
            finally:
                services.stop()
    finally:
        stack.stop()
    result = {
        "nproc": os.cpu_count(),
        "load_average_at_start": [round(v, 2) for v in load],
        "store_backend": mongo_backend(),
        "outages_each": args.outages,
        "down_s_after_all_not_ready": args.down,
        "median": {kind: medians(values) for kind, values in samples.items()},
        "samples": samples,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2))
    print(json.dumps(result["median"], indent=2))
    print(f"written to {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
