"""`make bench`: the mailbox access endpoint's latency and CPU, and the cost of one health check
(issue 17, docs/adr/0023).

Starts the real stack and services, links `--mailboxes` password mailboxes (the stack's
Dovecot) and as many Google mailboxes (the local OAuth server, through the whole sign-in), then:

- **access**: `--requests` `POST .../mailboxes/{id}/access` per kind, one at a time, taking the
  mailboxes in turn: password mailboxes (the registry opens the sealed passwords), OAuth
  mailboxes with a token fresh enough (the registry asks the broker, which answers its stored
  token), and OAuth mailboxes with `min_valid_seconds` (900) above the tokens' whole life (the
  local server issues 600 s tokens for this part), so the broker refreshes at the local OAuth
  server first, every time. The kinds take turns request by request,
  so machine noise favours none. Latency median and p99, requests/s, and the CPU of the
  registry and the broker per access (utime+stime from /proc, their process trees);
- **health checks**: `--checks` on-demand checks per kind (`POST .../checks`), one at a time,
  each timed until the registry's listing shows the new `last_checked_at` (polled every 50 ms,
  which the registry's CPU includes), with the CPU of our four services per check (the registry
  requests and applies it; the imap-verifier or the broker logs in).

Figures go to bench/results/mailbox-access.json. Quote medians and ratios from one run.
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
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from link_throughput import cpu_snapshot, link_body  # bench/, beside this file
from oauth_link import one_link as oauth_link

from localinfra.services import RunningServices, ServiceConfig, register_broker_app, start_services
from localinfra.stack import Endpoints, LocalStack

RESULTS = Path(__file__).resolve().parent / "results"
TIMEOUT = 30.0
OUR_SERVICES = ("link_api", "registry", "imap_verifier", "oauth_broker")  # process names


def _percentile(samples: list[float], share: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


async def _link_password_mailbox(
    api: httpx.AsyncClient, stack: LocalStack, infra: Endpoints
) -> tuple[str, str]:
    """Links a new Dovecot user's mailbox; returns its mailbox id and the bench's user."""
    address = f"access-{secrets.token_hex(4)}@example.org"
    password = secrets.token_urlsafe(18)
    stack.add_mail_user(address, password)
    user = f"u-{secrets.token_hex(4)}"
    body = link_body(infra, address, password)
    accepted = (await api.post(f"/v1/accounts/bench/users/{user}/links", json=body)).json()
    while True:
        link = (await api.get(accepted["status_url"])).json()
        if link["status"] == "linked":
            return str(link["mailbox_id"]), user
        if link["status"] == "failed":
            raise RuntimeError(f"bench link failed: {link['failure']}")
        await asyncio.sleep(0.05)


async def _link_oauth_mailbox(
    api: httpx.AsyncClient, browser: httpx.AsyncClient, stack: LocalStack
) -> tuple[str, str, str]:
    """Links a new Google mailbox through the sign-in; returns its mailbox id, user and
    address."""
    address = f"access-{secrets.token_hex(4)}@gmail.com"
    stack.oauth_server.add_user("google", address)
    await oauth_link(api, browser, address)
    user = f"u-{address}"  # what oauth_link names its user
    mailboxes = (await api.get(f"/v1/accounts/bench/users/{user}/mailboxes")).json()
    return str(mailboxes["mailboxes"][0]["mailbox_id"]), user, address


def _tokens_issued(stack: LocalStack, addresses: list[str]) -> int:
    return sum(len(stack.oauth_server.issued_tokens(a, "access_token")) for a in addresses)


def _cpu_of(services: RunningServices) -> Callable[[], dict[str, float]]:
    roots = {p.name: p.pid for p in services.processes if p.pid is not None}
    return lambda: cpu_snapshot(roots)


async def _timed(
    call: Callable[[], Awaitable[None]], count: int, cpu: Callable[[], dict[str, float]]
) -> tuple[list[float], dict[str, float], float]:
    """Runs `call` `count` times; returns latencies, CPU seconds by process, wall seconds."""
    before, began = cpu(), time.perf_counter()
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        await call()
        latencies.append(time.perf_counter() - started)
    wall = time.perf_counter() - began
    after = cpu()
    return latencies, {name: after[name] - before[name] for name in before}, wall


async def measure_access(
    registry: httpx.AsyncClient,
    kinds: dict[str, tuple[list[str], int | None]],
    requests: int,
    cpu: Callable[[], dict[str, float]],
) -> dict[str, Any]:
    """Interleaves the kinds request by request; each kind's CPU is the sum over its own
    requests' windows."""
    samples: dict[str, list[float]] = {kind: [] for kind in kinds}
    used: dict[str, dict[str, float]] = {kind: {} for kind in kinds}
    for i in range(requests):
        for kind, (mailbox_ids, min_valid) in kinds.items():
            mailbox_id = mailbox_ids[i % len(mailbox_ids)]
            body = {} if min_valid is None else {"min_valid_seconds": min_valid}
            path = f"/v1/accounts/bench/mailboxes/{mailbox_id}/access"

            async def ask(path: str = path, body: dict[str, Any] = body) -> None:
                answer = await registry.post(path, json=body)
                if answer.status_code != 200:
                    raise RuntimeError(f"access answered {answer.status_code}: {answer.text}")

            [latency], cpu_used, _ = await _timed(ask, 1, cpu)
            samples[kind].append(latency)
            for name, seconds in cpu_used.items():
                used[kind][name] = used[kind].get(name, 0.0) + seconds
    return {
        kind: {
            "requests": requests,
            "p50_ms": _ms(statistics.median(samples[kind])),
            "p99_ms": _ms(_percentile(samples[kind], 0.99)),
            "max_ms": _ms(max(samples[kind])),
            "registry_cpu_ms_per_access": _ms(used[kind]["registry"] / requests),
            "broker_cpu_ms_per_access": _ms(used[kind]["oauth_broker"] / requests),
        }
        for kind in kinds
    }


async def _last_checked(
    registry: httpx.AsyncClient, user_of: dict[str, str], mailbox_id: str
) -> str:
    # The registry's own listing (operator key): polling through link-api would add its CPU.
    path = f"/v1/accounts/bench/users/{user_of[mailbox_id]}/mailboxes"
    listing = (await registry.get(path)).json()
    [mailbox] = [m for m in listing["mailboxes"] if m["mailbox_id"] == mailbox_id]
    return str(mailbox.get("last_checked_at") or "")


async def measure_checks(
    registry: httpx.AsyncClient,
    kinds: dict[str, list[str]],
    user_of: dict[str, str],
    checks: int,
    cpu: Callable[[], dict[str, float]],
) -> dict[str, Any]:
    samples: dict[str, list[float]] = {kind: [] for kind in kinds}
    used: dict[str, dict[str, float]] = {kind: {} for kind in kinds}
    for i in range(checks):
        for kind, mailbox_ids in kinds.items():
            mailbox_id = mailbox_ids[i % len(mailbox_ids)]
            before = await _last_checked(registry, user_of, mailbox_id)

            async def check(mailbox_id: str = mailbox_id, before: str = before) -> None:
                path = f"/v1/accounts/bench/mailboxes/{mailbox_id}/checks"
                answer = await registry.post(path)
                if answer.status_code != 202:
                    raise RuntimeError(f"check answered {answer.status_code}: {answer.text}")
                deadline = time.monotonic() + TIMEOUT
                while await _last_checked(registry, user_of, mailbox_id) == before:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"check of {mailbox_id} never applied")
                    await asyncio.sleep(0.05)

            [latency], cpu_used, _ = await _timed(check, 1, cpu)
            samples[kind].append(latency)
            for name, seconds in cpu_used.items():
                used[kind][name] = used[kind].get(name, 0.0) + seconds
    return {
        kind: {
            "checks": checks,
            "p50_ms": _ms(statistics.median(samples[kind])),
            "p90_ms": _ms(_percentile(samples[kind], 0.9)),
            **{f"{name}_cpu_ms_per_check": _ms(used[kind][name] / checks) for name in OUR_SERVICES},
            "our_services_cpu_ms_per_check": _ms(
                sum(used[kind][name] for name in OUR_SERVICES) / checks
            ),
        }
        for kind in kinds
    }


async def measure(
    stack: LocalStack, infra: Endpoints, services: RunningServices, args: argparse.Namespace
) -> dict[str, Any]:
    tls = ssl.create_default_context(cafile=infra.ca_file)
    product = {"Authorization": f"Bearer {services.caller_token}"}
    mailer = {"Authorization": f"Bearer {services.mailer_token}"}
    operator = {"Authorization": f"Bearer {services.operator_token}"}
    async with (
        httpx.AsyncClient(base_url=services.api_url, headers=product, timeout=TIMEOUT) as api,
        httpx.AsyncClient(verify=tls, timeout=TIMEOUT) as browser,
        httpx.AsyncClient(
            base_url=services.registry_url, headers=mailer, timeout=TIMEOUT
        ) as registry,
        httpx.AsyncClient(
            base_url=services.registry_url, headers=operator, timeout=TIMEOUT
        ) as operator_api,
    ):
        linked = [await _link_password_mailbox(api, stack, infra) for _ in range(args.mailboxes)]
        # Tokens of 10 minutes: asking for 15 (oauth_refresh_first) makes the broker refresh
        # every time; the default 5 minutes (oauth_fresh_token) never does.
        stack.oauth_server.access_token_lifetime = 600
        linked_oauth = [
            await _link_oauth_mailbox(api, browser, stack) for _ in range(args.mailboxes)
        ]
        addresses = [address for _, _, address in linked_oauth]
        user_of = dict(linked + [(mailbox_id, user) for mailbox_id, user, _ in linked_oauth])
        passwords = [mailbox_id for mailbox_id, _ in linked]
        oauths = [mailbox_id for mailbox_id, _, _ in linked_oauth]
        cpu = _cpu_of(services)
        kinds: dict[str, tuple[list[str], int | None]] = {
            "password": (passwords, None),
            "oauth_fresh_token": (oauths, None),
            "oauth_refresh_first": (oauths, 900),
        }
        await measure_access(registry, kinds, args.warmup, cpu)
        issued_before = _tokens_issued(stack, addresses)
        access = await measure_access(registry, kinds, args.requests, cpu)
        # What the provider saw: one token per refresh (the proof the refresh kind refreshed).
        access["oauth_refresh_first"]["refreshes_at_the_provider"] = (
            _tokens_issued(stack, addresses) - issued_before
        )
        checks = await measure_checks(
            operator_api, {"password": passwords, "oauth": oauths}, user_of, args.checks, cpu
        )
    return {"access": access, "health_check": checks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mailboxes", type=int, default=5)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--checks", type=int, default=20)
    args = parser.parse_args()
    stack = LocalStack()
    try:
        infra = stack.start()
        config = ServiceConfig(
            kafka_bootstrap=infra.kafka_bootstrap,
            mongodb_uri=infra.mongodb_uri,
            ca_file=infra.ca_file,
            # The stack's DNS (example.org's SRV: published settings) and relay, as `make run`.
            dns_servers=(infra.dns_server,),
            ownership_relay_port=infra.relay_port,
            namespace="bench-access",
            log_level="WARNING",
            oauth_server_url=infra.oauth_server_url,
            oauth_mail_host=infra.tls_hostname,
            oauth_imaps_port=infra.oauth_imaps_port,
            oauth_submissions_port=infra.oauth_submissions_port,
            extra_env={
                # Only the bench's own checks run, and as many as it asks for.
                "MBL_HEALTH_CHECK_INTERVAL_SECONDS": "0",
                "MBL_HEALTH_ON_DEMAND_CHECKS_PER_HOUR": "100000",
                "MBL_ACCESS_RATE_PER_MINUTE": "100000",
            },
        )
        with tempfile.TemporaryDirectory(prefix="mbl-bench-") as logs:
            services = start_services(config, Path(logs))
            register_broker_app(stack.oauth_server, config, services)
            try:
                figures = asyncio.run(measure(stack, infra, services, args))
            finally:
                services.stop()
    finally:
        stack.stop()
    figures["measured_at"] = datetime.now().astimezone().isoformat(timespec="seconds")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "mailbox-access.json").write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures, indent=2))
    print(f"written to {RESULTS / 'mailbox-access.json'}", file=sys.stderr)


if __name__ == "__main__":
    main()
