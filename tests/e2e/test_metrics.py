"""A real Prometheus scrapes the four services of a real run: a linked and a failed password
link show up as PromQL answers (outcomes, verification histogram, HTTP route templates,
registry decisions, consumer lag, `up`), and no /metrics output holds a password, an address
or an id."""

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from localinfra.prometheus import LocalPrometheus
from localinfra.services import RunningServices
from localinfra.stack import Endpoints, LocalStack

from .conftest import (
    MailUser,
    caller,
    imap_body,
    link_and_wait,
    running_services,
    service_config,
    unique_user_id,
)

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
JOBS = {
    "link_api": "link-api",
    "registry": "registry",
    "imap_verifier": "imap-verifier",
    "oauth_broker": "oauth-broker",
}
LINKS_ROUTE = "/v1/accounts/{account_id}/users/{user_id}/links"


@dataclass
class MetricsRun:
    services: RunningServices
    prometheus: LocalPrometheus
    metrics_urls: dict[str, str]
    install_seconds: float


def _metrics_urls(running: RunningServices) -> dict[str, str]:
    # Every process's HTTP port is in its environment (the verifier's is not in RunningServices).
    urls = {}
    for process in running.processes:
        port = (process.env or {})["MBL_HTTP_PORT"]
        urls[JOBS[process.name]] = f"http://127.0.0.1:{port}/metrics"
    return urls


@pytest.fixture(scope="module")
def metrics_run(infra: Endpoints, workdir: Path, local_stack: LocalStack) -> Iterator[MetricsRun]:
    config = service_config(infra, namespace="e2e-metrics")
    with running_services(config, workdir / "services-metrics", local_stack.oauth_server) as run:
        urls = _metrics_urls(run)
        targets = {
            job: [url.removeprefix("http://").removesuffix("/metrics")] for job, url in urls.items()
        }
        started = time.monotonic()
        prometheus = LocalPrometheus(targets, rule_files=[ALERTS], scrape_interval=1.0)
        try:
            prometheus.start()
        except Exception as exc:
            pytest.fail(f"the real Prometheus server could not be installed or started: {exc}")
        try:
            yield MetricsRun(run, prometheus, urls, time.monotonic() - started)
        finally:
            prometheus.stop()


@pytest.fixture
async def metrics_api(metrics_run: MetricsRun) -> AsyncIterator[httpx.AsyncClient]:
    async with caller(metrics_run.services.api_url, metrics_run.services) as client:
        yield client


async def _value(prometheus: LocalPrometheus, promql: str, at_least: float = 1.0) -> float:
    """Polls until the query's first value is at least `at_least` (scrapes run every second)."""
    deadline = time.monotonic() + 60
    while True:
        result = await asyncio.to_thread(prometheus.query, promql)
        value = float(result[0]["value"][1]) if result else 0.0
        if value >= at_least:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{promql} = {result} after 60 s (want >= {at_least})")
        await asyncio.sleep(0.5)


# Four services plus Prometheus on a busy 2-core machine: more than the default 120 s.
@pytest.mark.timeout(600)
async def test_prometheus_sees_outcomes_latencies_routes_lag_and_up(
    metrics_run: MetricsRun,
    metrics_api: httpx.AsyncClient,
    infra: Endpoints,
    local_stack: LocalStack,
) -> None:
    prometheus = metrics_run.prometheus
    user = MailUser(
        f"metrics-{secrets.token_hex(4)}@example.org", "MetricSecret-" + secrets.token_hex(8)
    )
    local_stack.add_mail_user(user.address, user.password)
    wrong = "WrongMetricSecret-" + secrets.token_hex(8)
    failed_body = imap_body(infra, user)
    failed_body["imap"]["password"] = wrong
    failed_user, linked_user = unique_user_id(), unique_user_id()
    failed = await link_and_wait(metrics_api, "globex", failed_user, failed_body)
    assert failed["failure"]["code"] == "imap_auth_failed"
    linked = await link_and_wait(metrics_api, "acme", linked_user, imap_body(infra, user))
    assert linked["status"] == "linked"

    for job in JOBS.values():
        assert await _value(prometheus, f'up{{job="{job}"}}') == 1
    await _value(prometheus, 'sum(mailbox_link_links_total{job="link-api", outcome="linked"})')
    await _value(
        prometheus,
        'sum(mailbox_link_links_total{job="link-api", outcome="failed", code="imap_auth_failed"})',
    )
    await _value(
        prometheus,
        "sum(mailbox_link_verification_duration_seconds_count"
        '{job="imap-verifier", protocol="imap", result="imap_auth_failed"})',
    )
    await _value(
        prometheus,
        "sum(mailbox_link_verification_duration_seconds_count"
        '{job="imap-verifier", protocol="imap", result="ok"})',
    )
    buckets = await asyncio.to_thread(
        prometheus.query,
        'mailbox_link_verification_duration_seconds_bucket{job="imap-verifier", le="+Inf"}',
    )
    assert buckets, "the verification histogram has no buckets"
    await _value(
        prometheus,
        f'sum(mailbox_link_http_requests_total{{job="link-api", method="POST", '
        f'route="{LINKS_ROUTE}", status="202"}})',
        at_least=2,
    )
    await _value(
        prometheus,
        'sum(mailbox_link_http_request_duration_seconds_count{job="link-api", method="GET"})',
    )
    await _value(prometheus, 'sum(mailbox_link_registry_decisions_total{decision="linked"})')
    await _value(
        prometheus,
        'sum(mailbox_link_registry_decisions_total{decision="rejected", code="imap_auth_failed"})',
    )
    # Every service consumes: each has lag series for its partitions (0 once caught up).
    for job in JOBS.values():
        await _value(prometheus, f'count(mailbox_link_kafka_consumer_lag{{job="{job}"}})')
    await _value(prometheus, 'count(process_cpu_seconds_total{job="link-api"})')
    # The rules load and evaluate against real series (no alert is expected on a healthy run).
    rules = await asyncio.to_thread(prometheus.query, "ALERTS")
    assert not [r for r in rules if r["metric"].get("alertname") == "MailboxLinkNoHealthyReplica"]

    # No secret, address or id in any service's /metrics.
    async with httpx.AsyncClient(timeout=10) as client:
        outputs = {
            job: (await client.get(url)).text for job, url in metrics_run.metrics_urls.items()
        }
    forbidden = [
        user.password, wrong, user.address, user.address.split("@")[0],
        failed_user, linked_user, failed["link_id"], linked["link_id"],
    ]  # fmt: skip
    for job, text in outputs.items():
        assert "mailbox_link_" in text, f"{job} serves no mailbox-link metric"
        for secret in forbidden:
            assert secret not in text, f"{job}'s /metrics shows {secret[:6]}..."
        assert "@" not in text, f"{job}'s /metrics shows an address"
    print(f"prometheus install+start took {metrics_run.install_seconds:.1f} s")
