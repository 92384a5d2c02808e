"""The metrics: /metrics is served in the text format, HTTP requests are counted by route
template, and every label value any metric holds is one of its declared values (no address,
id, token or free text can become a label)."""

import httpx
import pytest
from aiokafka import TopicPartition
from fastapi import APIRouter
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from mailbox_link_shared import metrics
from mailbox_link_shared.consumer_lag import measure_lag
from mailbox_link_shared.http import CallerKeys, build_http_app, scoped
from mailbox_link_shared.scopes import Scope, caller_keys

TOKEN = "m" * 32
KEYS = CallerKeys(caller_keys({"caller": SecretStr(TOKEN)}, {}, {}))
ADDRESS = "alice.secret@example.org"


def _client() -> httpx.AsyncClient:
    router = APIRouter()

    @router.post("/v1/accounts/{account_id}/users/{user_id}/links")
    async def create(account_id: str, user_id: str) -> dict[str, str]:
        return {"ok": "yes"}

    @router.get("/v1/mailboxes/{mailbox}")
    async def mailbox(mailbox: str) -> dict[str, str]:
        return {"ok": "yes"}

    app = build_http_app(
        title="t",
        router=scoped(KEYS.require(Scope.LINKS), router),
        keys=KEYS,
        on_start=[],
        on_stop=[],
        api_docs=False,
    )
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


def _sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_metrics_endpoint_is_open_and_in_text_format() -> None:
    async with _client() as client:
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    names = {family.name for family in text_string_to_metric_families(response.text)}
    assert "mailbox_link_http_requests" in names
    assert "process_cpu_seconds" in names  # the default process collector


async def test_requests_are_counted_by_route_template_never_the_raw_path() -> None:
    route = "/v1/accounts/{account_id}/users/{user_id}/links"
    labels = {"route": route, "method": "POST", "status": "200"}
    before = _sample("mailbox_link_http_requests_total", labels)
    unmatched = {"route": "unmatched", "method": "GET", "status": "404"}
    before_unmatched = _sample("mailbox_link_http_requests_total", unmatched)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with _client() as client:
        answered = await client.post(f"/v1/accounts/acc-9/users/{ADDRESS}/links", headers=auth)
        assert answered.status_code == 200
        await client.get(f"/nowhere/{ADDRESS}")
        await client.get(f"/v1/mailboxes/{ADDRESS}", headers={"Authorization": "Bearer no"})
        text = (await client.get("/metrics")).text
    assert _sample("mailbox_link_http_requests_total", labels) == before + 1
    assert _sample("mailbox_link_http_requests_total", unmatched) == before_unmatched + 1
    refused = {"route": "/v1/mailboxes/{mailbox}", "method": "GET", "status": "401"}
    assert _sample("mailbox_link_http_requests_total", refused) >= 1
    count = _sample(
        "mailbox_link_http_request_duration_seconds_count", {"route": route, "method": "POST"}
    )
    assert count >= 1
    assert ADDRESS not in text
    assert "acc-9" not in text


def test_recording_helpers_bound_every_label() -> None:
    # Values from code paths that could carry free text are folded into the allowed sets.
    metrics.link_finished(None)
    metrics.link_finished("imap_auth_failed")
    metrics.link_finished(ADDRESS)
    metrics.verification_finished("IMAP", None, 0.01)
    metrics.verification_finished("smtp", "smtp_auth_failed", 0.02)
    metrics.verification_finished(ADDRESS, ADDRESS, 0.03)
    metrics.oauth_sign_in("google", None)
    metrics.oauth_sign_in("my-company-sso", "account_mismatch")
    metrics.oauth_refresh("microsoft", "deployment_misconfigured")
    metrics.registry_decision("reserved")
    metrics.registry_decision("rejected", "already_linked_elsewhere")
    metrics.registry_decision(ADDRESS, ADDRESS)
    metrics.consumer_lag("registry", "ns.link-requests", 0, 3)
    metrics.consumer_lag(ADDRESS, f"topic with {ADDRESS}", 1, -2)
    metrics.dead_lettered("link-api", "ns.mailboxes", "handler failed: KeyError: alice")
    metrics.outbox_backlog(2)
    metrics.rate_limit_refused("login_attempts")
    metrics.rate_limit_refused(ADDRESS)
    assert _sample("mailbox_link_links_total", {"outcome": "failed", "code": "internal_error"}) >= 1
    assert (
        _sample(
            "mailbox_link_oauth_sign_ins_total", {"provider": "oidc", "result": "account_mismatch"}
        )
        >= 1
    )
    lag = {"service": "other", "topic": "other", "partition": "1"}
    assert _sample("mailbox_link_kafka_consumer_lag", lag) == 0  # never negative
    metrics.forget_consumer_lag(ADDRESS, "x x", 1)
    assert REGISTRY.get_sample_value("mailbox_link_kafka_consumer_lag", lag) is None


def test_every_label_value_in_the_registry_is_an_allowed_one() -> None:
    test_recording_helpers_bound_every_label()  # so every metric has samples to check
    specs = {spec.name: spec for spec in metrics.SPECS}
    seen = set()
    for family in REGISTRY.collect():
        if not family.name.startswith(metrics.PREFIX):
            continue
        spec = specs.get(family.name) or specs.get(f"{family.name}_total")
        assert spec is not None, f"{family.name} is not declared in metrics.SPECS"
        seen.add(spec.name)
        for sample in family.samples:
            for label, value in sample.labels.items():
                if label in ("le", "quantile"):
                    continue  # the histogram's own bucket label
                assert label in spec.labels, f"{family.name}: undeclared label {label}"
                assert metrics.is_allowed(spec.labels[label], value), (
                    f"{family.name}{{{label}={value!r}}} is not an allowed value"
                )
                assert "@" not in value
    assert seen == set(specs)


@pytest.mark.parametrize("spec", metrics.SPECS, ids=lambda spec: spec.name)
def test_names_follow_prometheus_conventions(spec: metrics.MetricSpec) -> None:
    assert spec.name.startswith("mailbox_link_")
    family = next(f for f in REGISTRY.collect() if spec.name in (f.name, f"{f.name}_total"))
    if family.type == "counter":
        assert spec.name.endswith("_total")
    if family.type == "histogram":
        assert spec.name.endswith("_seconds")


class _FakeConsumer:
    """What measure_lag asks of aiokafka's consumer."""

    def __init__(
        self, ends: dict[TopicPartition, int], positions: dict[TopicPartition, int]
    ) -> None:
        self.owned = set(ends)
        self.ends = ends
        self.positions = positions

    def assignment(self) -> set[TopicPartition]:
        return self.owned

    async def end_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self.ends[tp] for tp in partitions}

    async def position(self, tp: TopicPartition) -> int:
        return self.positions[tp]


async def test_consumer_lag_is_end_minus_committed_and_dropped_when_revoked() -> None:
    first, second = TopicPartition("ns.lag-test", 0), TopicPartition("ns.lag-test", 1)
    consumer = _FakeConsumer({first: 10, second: 7}, {second: 5})
    known: set[TopicPartition] = set()
    committed = {first: 4}
    await measure_lag(consumer, "registry", known, committed.get)

    def lag(partition: str) -> float | None:
        labels = {"service": "registry", "topic": "ns.lag-test", "partition": partition}
        return REGISTRY.get_sample_value("mailbox_link_kafka_consumer_lag", labels)

    assert lag("0") == 6  # committed by us
    assert lag("1") == 2  # nothing committed yet: the fetch position
    consumer.owned = {second}
    await measure_lag(consumer, "registry", known, committed.get)
    assert lag("0") is None
    assert known == {second}
