"""One password link is one trace across the four services, seen by a real OpenTelemetry
collector; no secret, address or user's host in any span; every log line is JSON with the
link's trace.

The collector (localinfra.otel_collector) is built from source the first time (minutes); a
machine without Go fails this test with the reason, it is never skipped.
"""

import base64
import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localinfra.otel_collector import RunningCollector, attribute_values, running_collector
from localinfra.stack import Endpoints, LocalStack

from .conftest import (
    MailUser,
    caller,
    imap_body,
    request_link,
    running_services,
    service_config,
    unique_user_id,
    wait_for_outcome,
)

# OTLP/JSON span kinds.
SERVER, PRODUCER, CONSUMER = 2, 4, 5
SERVICES = ("link-api", "registry", "imap-verifier", "oauth-broker")
SPANS_DEADLINE = 60.0


@pytest.fixture(scope="module")
def collector() -> Iterator[RunningCollector]:
    with running_collector() as running:
        yield running


def _attributes(span: dict[str, Any]) -> dict[str, Any]:
    return attribute_values(span.get("attributes", []))


def _trace_of(collector: RunningCollector, link_id: str) -> tuple[str, list[dict[str, Any]]]:
    """Polls until the link's final consumer span (link-api's, status linked) is exported;
    returns its trace id and every span of that trace."""
    deadline = time.monotonic() + SPANS_DEADLINE
    while True:
        spans = collector.spans()
        final = [
            s
            for s in spans
            if _attributes(s).get("mailbox_link.link_id") == link_id
            and _attributes(s).get("mailbox_link.link_status") == "linked"
        ]
        if final:
            trace_id = final[0]["traceId"]
            return trace_id, [s for s in spans if s["traceId"] == trace_id]
        if time.monotonic() > deadline:
            raise AssertionError(
                f"no linked span of {link_id} within {SPANS_DEADLINE} s; spans received: "
                f"{[(s['_service'], s['name']) for s in spans]}; collector log:\n"
                f"{collector.process.log_tail()}"
            )
        time.sleep(0.5)


# The first run builds the collector (minutes on 2 cores) inside the collector fixture.
@pytest.mark.timeout(1200)
async def test_one_password_link_is_one_trace_across_the_services(
    collector: RunningCollector,
    infra: Endpoints,
    local_stack: LocalStack,
    workdir: Path,
) -> None:
    user = MailUser(f"trace-{secrets.token_hex(4)}@example.org", "Trace-" + secrets.token_hex(8))
    local_stack.add_mail_user(user.address, user.password)
    config = service_config(
        infra,
        namespace="e2e-tracing",
        extra_env={"OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint, "MBL_LOG_FORMAT": "json"},
    )
    logs_dir = workdir / "tracing-services"
    with running_services(config, logs_dir, local_stack.oauth_server) as running:
        async with caller(running.api_url, running) as api:
            accepted = await request_link(api, "acme", unique_user_id(), imap_body(infra, user))
            link = await wait_for_outcome(api, accepted["status_url"])
        assert link["status"] == "linked", link
        link_id = link["link_id"]
        log_files = dict(running.logs)
    # Stopped (SIGTERM): each service sent its last spans on the way out (the OTLP export is
    # synchronous), so the collector holds them all; stopping it writes them to its file.
    collector.stop()

    trace_id, spans = _trace_of(collector, link_id)
    by_id = {s["spanId"]: s for s in spans}

    # One trace: every span naming the link is in it, and it has one root, the HTTP request.
    about_link = [s for s in collector.spans() if _attributes(s).get("mailbox_link.link_id")]
    assert {
        s["traceId"] for s in about_link if _attributes(s)["mailbox_link.link_id"] == link_id
    } == {trace_id}
    roots = [s for s in spans if not s.get("parentSpanId")]
    assert len(roots) == 1, [s["name"] for s in roots]
    root = roots[0]
    assert root["kind"] == SERVER
    assert root["_service"] == "link-api"
    assert _attributes(root)["http.route"] == "/v1/accounts/{account_id}/users/{user_id}/links"
    assert int(_attributes(root)["http.response.status_code"]) == 202  # intValue: a string
    assert user.address not in root["name"]

    assert {s["_service"] for s in spans} == set(SERVICES), sorted({s["_service"] for s in spans})

    # Causal order: each consumer span is the child of the producer span of its record.
    consumers = [s for s in spans if s["kind"] == CONSUMER]
    assert consumers
    for consumer in consumers:
        parent = by_id[consumer["parentSpanId"]]
        assert parent["kind"] == PRODUCER, (consumer["name"], parent["name"])
        c, p = _attributes(consumer), _attributes(parent)
        assert c["messaging.message.id"] == p["messaging.message.id"]
        assert c["messaging.destination.name"] == p["messaging.destination.name"]
        assert c["messaging.system"] == "kafka"
        assert c["messaging.operation.type"] == "process"
    # ... and the chain of events is the link's: requested, reserved, verified, linked.
    types_sent = [_attributes(s)["mailbox_link.event_type"] for s in spans if s["kind"] == PRODUCER]
    for event_type in ("LinkRequested", "LinkReserved", "MailboxVerified", "MailboxLinked"):
        assert event_type in types_sent, types_sent
    link_requested = next(
        s for s in spans
        if s["kind"] == PRODUCER and _attributes(s)["mailbox_link.event_type"] == "LinkRequested"
    )  # fmt: skip
    assert link_requested["parentSpanId"] == root["spanId"]

    # The registry's decisions, and link-api's final status.
    decisions = {
        s["name"]: _attributes(s)["mailbox_link.decision"]
        for s in spans
        if "mailbox_link.decision" in _attributes(s)
    }
    assert decisions.get("registry reserve") == "reserved", decisions
    assert decisions.get("registry link") == "linked", decisions

    # The IMAP and SMTP checks, under the verifier's consumer span.
    for protocol in ("imap", "smtp"):
        check = next(s for s in spans if s["name"] == f"{protocol} check")
        attributes = _attributes(check)
        assert attributes["mail.result"] == "ok"
        assert attributes["mail.protocol"] == protocol
        ancestor = check
        while ancestor.get("parentSpanId") and ancestor["kind"] != CONSUMER:
            ancestor = by_id[ancestor["parentSpanId"]]
        assert ancestor["kind"] == CONSUMER
        assert ancestor["_service"] == "imap-verifier"

    # Nothing secret or personal in any span: not the password in the encodings it was sent
    # in, not the address, not the user's server.
    password = user.password
    plain = base64.b64encode(f"\0{user.address}\0{password}".encode()).decode()
    forbidden = [password, base64.b64encode(password.encode()).decode(), plain, user.address]
    local_part = user.address.split("@")[0]
    for span in collector.spans():
        text = json.dumps([span["name"], span.get("attributes", []), span.get("events", [])])
        for value in (*forbidden, local_part):
            assert value not in text, f"{value!r} in span {span['name']}"
        for attribute, value in _attributes(span).items():
            assert str(value) != infra.tls_hostname, f"the user's host in {attribute}"

    # Logs: every line of every service is one JSON object; the link's lines carry its trace.
    for name, path in log_files.items():
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        assert lines, name
        entries = []
        for line in lines:
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                raise AssertionError(f"{name}: not a JSON line: {line[:300]}") from None
        for entry in entries:
            assert {"time", "level", "service", "logger", "message"} <= set(entry), entry
        of_link = [e for e in entries if e.get("link_id") == link_id]
        if name in ("registry", "imap_verifier", "link_api"):
            assert of_link, f"{name}: no log line with link_id {link_id}"
        for entry in of_link:
            assert entry.get("trace_id") == trace_id, (name, entry)
            assert password not in json.dumps(entry)
