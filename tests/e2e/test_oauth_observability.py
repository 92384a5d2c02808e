"""One OAuth (Google-like) link is one trace across link-api, the registry and the OAuth broker,
seen by a real OpenTelemetry collector: the request, the reservation, the sign-in offer, the
browser's callback with the code exchange, the product's confirmation, MailboxVerified, the
registry's decision and link-api's linked. No token, code, state, secret or address is in any
span. A real Prometheus counts the sign-ins by result and the token refreshes, and each
refresh is a span of its own.

The collector (localinfra.otel_collector) is built from source the first time (minutes); a
machine without Go fails this test with the reason, it is never skipped.
"""

import asyncio
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from localinfra import LocalOAuthServer
from localinfra.otel_collector import RunningCollector, attribute_values, running_collector
from localinfra.prometheus import LocalPrometheus
from localinfra.services import RunningServices
from localinfra.stack import Endpoints, LocalStack

from .conftest import caller, running_services, service_config, wait_for_outcome
from .oauth_flow import Browser, confirm, new_account, start_link

# OTLP/JSON span kinds.
INTERNAL, SERVER, PRODUCER, CONSUMER = 1, 2, 4, 5
JOBS = {
    "link_api": "link-api",
    "registry": "registry",
    "imap_verifier": "imap-verifier",
    "oauth_broker": "oauth-broker",
}
LINKS_ROUTE = "/v1/accounts/{account_id}/users/{user_id}/links"
# Shorter than the broker's refresh margin: every housekeeping round refreshes the grant.
TOKEN_LIFETIME_SECONDS = 20


def _attributes(span: dict[str, Any]) -> dict[str, Any]:
    return attribute_values(span.get("attributes", []))


def _targets(running: RunningServices) -> dict[str, list[str]]:
    # Every process's HTTP port is in its environment (the verifier's is not in RunningServices).
    return {
        JOBS[process.name]: [f"127.0.0.1:{(process.env or {})['MBL_HTTP_PORT']}"]
        for process in running.processes
    }


async def _value(prometheus: LocalPrometheus, promql: str) -> float:
    """Polls until the query answers at least 1 (scrapes run every second)."""
    deadline = time.monotonic() + 60
    while True:
        result = await asyncio.to_thread(prometheus.query, promql)
        value = float(result[0]["value"][1]) if result else 0.0
        if value >= 1:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{promql} = {result} after 60 s")
        await asyncio.sleep(0.5)


async def _wait_for(condition: Any, what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not await condition():
        assert time.monotonic() < deadline, f"{what}: not within {seconds} s"
        await asyncio.sleep(0.2)


# Four services, the collector and Prometheus on a busy 2-core machine; the first run also
# builds the collector (minutes).
@pytest.mark.timeout(1200)
async def test_one_oauth_link_is_one_trace_and_prometheus_counts_sign_ins_and_refreshes(
    infra: Endpoints,
    local_stack: LocalStack,
    workdir: Path,
    oauth: LocalOAuthServer,
    browser: Browser,
) -> None:
    with running_collector() as collector:
        config = service_config(
            infra,
            namespace="e2e-oauth-observability",
            extra_env={
                "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint,
                "MBL_OAUTH_REFRESH_MARGIN_SECONDS": "30",
                "MBL_HOUSEKEEPING_INTERVAL_SECONDS": "0.5",
            },
        )
        with running_services(config, workdir / "oauth-observability", oauth) as running:
            prometheus = LocalPrometheus(_targets(running), scrape_interval=1.0)
            try:
                prometheus.start()
            except Exception as exc:
                pytest.fail(f"the real Prometheus server could not be installed or started: {exc}")
            try:
                seen = await _link_deny_and_refresh(running, oauth, browser, prometheus)
            finally:
                prometheus.stop()
        # Stopped (SIGTERM): each service sent its last spans on the way out.
        collector.stop()
        _check_spans(collector, seen, config.oauth_client_secret)


async def _link_deny_and_refresh(
    running: RunningServices,
    oauth: LocalOAuthServer,
    browser: Browser,
    prometheus: LocalPrometheus,
) -> dict[str, Any]:
    """Links one Google mailbox (its tokens short-lived, so the broker refreshes them), has a
    second sign-in denied, and checks Prometheus; returns what the span checks need."""
    address = new_account(oauth, "google")
    oauth.access_token_lifetime = TOKEN_LIFETIME_SECONDS
    try:
        async with caller(running.api_url, running) as api:
            link, start = await start_link(api, address)
            url = await browser.begin(start)
            state = parse_qs(urlsplit(url).query)["state"][0]
            redirect = await browser.consent(url, address)
            code = parse_qs(urlsplit(redirect).query)["code"][0]
            page = await browser.open(redirect)
            assert 'data-result="verified"' in page.text, page.text
            confirmation = page.text.split('data-confirmation="')[1].split('"')[0]
            assert (await confirm(api, page, link=link)).status_code == 200
            final = await wait_for_outcome(api, link["status_url"])
            assert final["status"] == "linked", final
            signed_in = len(oauth.issued_tokens(address, "access_token"))

            async def refreshed() -> bool:
                return len(oauth.issued_tokens(address, "access_token")) > signed_in

            await _wait_for(refreshed, "a token refresh")

            denier = new_account(oauth, "google")
            denied, denied_url = await start_link(api, denier)
            answer = await browser.open(await browser.consent(denied_url, denier, "deny"))
            assert 'data-result="failed"' in answer.text, answer.text
            ended = await wait_for_outcome(api, denied["status_url"])
            assert ended["failure"]["code"] == "consent_denied", ended

            # Sign-ins by result, refreshes by result, and the OAuth link's outcome.
            broker = 'job="oauth-broker", provider="google"'
            await _value(
                prometheus, f'sum(mailbox_link_oauth_sign_ins_total{{{broker}, result="ok"}})'
            )
            await _value(
                prometheus,
                f'sum(mailbox_link_oauth_sign_ins_total{{{broker}, result="consent_denied"}})',
            )
            await _value(
                prometheus,
                f'sum(mailbox_link_oauth_token_refreshes_total{{{broker}, result="ok"}})',
            )
            await _value(
                prometheus,
                'sum(mailbox_link_verification_duration_seconds_count{job="oauth-broker", '
                'protocol="oauth", result="ok"})',
            )
            await _value(
                prometheus, 'sum(mailbox_link_links_total{job="link-api", outcome="linked"})'
            )
            await _value(
                prometheus, 'sum(mailbox_link_registry_decisions_total{decision="linked"})'
            )
            # Nothing of the sign-in in any /metrics output.
            forbidden = [address, denier, state, code, confirmation, link["link_id"]]
            for job, targets in _targets(running).items():
                text = (await api.get(f"http://{targets[0]}/metrics")).text
                for secret in forbidden:
                    assert secret not in text, f"{job}'s /metrics shows {secret[:6]}..."
    finally:
        oauth.access_token_lifetime = 3600
    cookies = [cookie.value for cookie in browser._client.cookies.jar]
    return {
        "link_id": link["link_id"],
        "denied_link_id": denied["link_id"],
        "address": address,
        "secrets": [
            address, address.split("@")[0], denier, state, code, confirmation,
            start.rsplit("/", 1)[-1], *cookies,
            *oauth.issued_tokens(address), *oauth.issued_tokens(denier),
        ],
    }  # fmt: skip


def _check_spans(collector: RunningCollector, seen: dict[str, Any], client_secret: str) -> None:
    link_id = seen["link_id"]
    spans = collector.spans()
    by_id = {s["spanId"]: s for s in spans}
    # The link's spans, but the refreshes: each of those is a trace of its own (a timer's work).
    of_link = [
        s
        for s in spans
        if _attributes(s).get("mailbox_link.link_id") == link_id
        and s["name"] != "oauth token refresh"
    ]
    assert of_link, f"no span of {link_id}; collector log:\n{collector.process.log_tail()}"
    traces = {s["traceId"] for s in of_link}
    assert len(traces) == 1, sorted((s["_service"], s["name"], s["traceId"]) for s in of_link)
    [trace_id] = traces
    in_trace = [s for s in spans if s["traceId"] == trace_id]
    names = sorted((s["_service"], s["name"]) for s in in_trace)

    # One root: link-api's HTTP request.
    roots = [s for s in in_trace if not s.get("parentSpanId")]
    assert len(roots) == 1, [s["name"] for s in roots]
    [root] = roots
    assert (root["_service"], root["kind"]) == ("link-api", SERVER)
    assert _attributes(root)["http.route"] == LINKS_ROUTE
    assert {"link-api", "registry", "oauth-broker"} <= {s["_service"] for s in in_trace}, names

    # The chain of events.
    sent = {_attributes(s)["mailbox_link.event_type"]: s for s in in_trace if s["kind"] == PRODUCER}
    for event_type in (
        "LinkRequested", "LinkReserved", "AuthorizationRequired", "MailboxVerified",
        "MailboxLinked",
    ):  # fmt: skip
        assert event_type in sent, (event_type, names)
    assert sent["LinkRequested"]["parentSpanId"] == root["spanId"]
    for consumer in (s for s in in_trace if s["kind"] == CONSUMER):
        assert by_id[consumer["parentSpanId"]]["kind"] == PRODUCER, consumer["name"]

    # The browser's callback: a span in the link's trace, linked to the callback's HTTP span
    # (a trace of its own), with the code exchange under it.
    [callback] = [s for s in in_trace if s["name"] == "oauth callback"]
    assert callback["_service"] == "oauth-broker"
    assert _attributes(callback)["oauth.result"] == "verified"
    assert _attributes(callback)["oauth.provider"] == "google"
    [exchange] = [s for s in in_trace if s["name"] == "oauth code exchange"]
    assert exchange["parentSpanId"] == callback["spanId"]
    [userinfo] = [s for s in in_trace if s["name"] == "oauth userinfo"]
    assert userinfo["parentSpanId"] == callback["spanId"]
    [http_link] = callback.get("links", [])
    http_span = by_id[http_link["spanId"]]
    assert (http_span["kind"], _attributes(http_span)["http.route"]) == (
        SERVER,
        "/v1/oauth/callback",
    )
    assert http_span["traceId"] != trace_id
    # The product's confirmation: MailboxVerified is published under it.
    [confirmed] = [s for s in in_trace if s["name"] == "oauth confirm"]
    assert _attributes(confirmed)["oauth.result"] == "confirmed"
    assert sent["MailboxVerified"]["parentSpanId"] == confirmed["spanId"]
    assert callback["parentSpanId"] == confirmed["parentSpanId"]  # the request's consumer span
    assert by_id[callback["parentSpanId"]]["kind"] == CONSUMER

    # The registry's decisions, and link-api's final status.
    decisions = {
        s["name"]: _attributes(s)["mailbox_link.decision"]
        for s in in_trace
        if "mailbox_link.decision" in _attributes(s)
    }
    assert decisions.get("registry reserve") == "reserved", decisions
    assert decisions.get("registry link") == "linked", decisions
    assert any(
        _attributes(s).get("mailbox_link.link_status") == "linked" and s["_service"] == "link-api"
        for s in in_trace
    ), names

    # The denied sign-in: its own link's trace, its callback's result the failure code.
    [denied] = [
        s
        for s in spans
        if s["name"] == "oauth callback"
        and _attributes(s).get("mailbox_link.link_id") == seen["denied_link_id"]
    ]
    assert _attributes(denied)["oauth.result"] == "consent_denied"
    assert denied["traceId"] != trace_id

    # Each refresh: a root span of its own trace, with its result.
    refreshes = [
        s
        for s in spans
        if s["name"] == "oauth token refresh"
        and _attributes(s).get("mailbox_link.link_id") == link_id
    ]
    assert refreshes, "no refresh span"
    for refresh in refreshes:
        assert refresh["_service"] == "oauth-broker"
        assert not refresh.get("parentSpanId")
        assert refresh["traceId"] != trace_id
        assert _attributes(refresh)["oauth.provider"] == "google"
    assert "ok" in {_attributes(s)["oauth.result"] for s in refreshes}

    # No token, code, state, cookie, secret or address in any span, event or link.
    forbidden = [*seen["secrets"], client_secret]
    for span in spans:
        text = json.dumps(
            [span["name"], span.get("attributes", []), span.get("events", []), span.get("links")]
        )
        for value in forbidden:
            assert value not in text, f"{value[:6]}... in span {span['name']}"
        assert "@" not in text, f"an address in span {span['name']}"
