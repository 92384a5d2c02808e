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

from localinfra.services import ServiceConfig, start_services
from localinfra.stack import Endpoints, LocalStack
from mailbox_link_contract.values import ConnectionSecurity
from mailbox_link_shared.mail_probes import Endpoint, probe_imap, probe_smtp

RESULTS = Path(__file__).resolve().parent / "results"
TIMEOUT = 10.0


async def one_link(api: httpx.AsyncClient, infra: Endpoints, address: str, password: str) -> float:
    """Links one mailbox; returns seconds from the POST to link-api recording it linked."""
    body = {
        "email": address,
        "terms_accepted": True,
        "imap": {
            "host": infra.tls_hostname,
            "port": infra.imaps_port,
            "security": "ssl",
            "password": password,
        },
        "smtp": {"host": infra.tls_hostname, "port": infra.submissions_port, "security": "ssl"},
    }
    user = f"bench-{secrets.token_hex(4)}"
    started = time.time()
    accepted = (await api.post(f"/v1/accounts/bench/users/{user}/links", json=body)).json()
    # Latency comes from link-api's own timestamp, so polling affects only the load: the first
    # look comes after the usual link time, so polls do not compete for these 2 cores with the
    # very path being measured.
    await asyncio.sleep(0.15)
    while True:
        link = (await api.get(accepted["status_url"])).json()
        if link["status"] == "linked":
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
) -> dict[str, list[float]]:
    tls = ssl.create_default_context(cafile=infra.ca_file)
    figures: dict[str, list[float]] = {
        "end_to_end": [],
        "bare_concurrent": [],
        "bare_sequential": [],
    }
    headers = {"Authorization": f"Bearer {token}"}
    for address, password in users:
        # A real mailbox already exists; Dovecot creates one on first login, so log in once
        # first, or the first side measured for each user would also pay for creating it.
        await bare_checks(infra, tls, address, password)
    async with httpx.AsyncClient(base_url=api_url, headers=headers, timeout=TIMEOUT) as api:
        for index, (address, password) in enumerate(users):
            linked = await one_link(api, infra, address, password)
            concurrent, sequential = await bare_checks(infra, tls, address, password)
            if index >= warmup:
                figures["end_to_end"].append(linked)
                figures["bare_concurrent"].append(concurrent)
                figures["bare_sequential"].append(sequential)
    return figures


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
            namespace="bench",
            log_level="WARNING",
        )
        with tempfile.TemporaryDirectory(prefix="mbl-bench-") as logs:
            services = start_services(config, Path(logs))
            services_in = time.monotonic() - began
            try:
                figures = asyncio.run(
                    measure(infra, services.api_url, services.caller_token, users, args.warmup)
                )
            finally:
                services.stop()
    finally:
        stack.stop()
    result = summary(figures, infra.started_in_seconds, services_in)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "link-latency.json").write_text(
        json.dumps({"summary": result, "samples_s": figures}, indent=2)
    )
    print(json.dumps(result, indent=2))
    print(f"written to {RESULTS / 'link-latency.json'}", file=sys.stderr)


if __name__ == "__main__":
    main()
