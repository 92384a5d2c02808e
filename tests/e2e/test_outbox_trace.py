"""A link request whose LinkRequested the outbox relay sends (link-api SIGKILLed after the send
was decided, before it was published; restarted, its relay sends it) continues the request's
trace: the record on Kafka carries the request's trace id in its traceparent, and the link's
spans, seen by a real OpenTelemetry collector, are all in that trace.

The request comes with the caller's own traceparent (link-api honours it), because the
request's own server span dies with the killed process.
"""

import asyncio
import json
import secrets
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer

from localinfra.otel_collector import attribute_values, running_collector
from localinfra.services import RunningServices, start_services
from localinfra.stack import Endpoints
from mailbox_link_contract.topics import Topics

from .conftest import caller, imap_body, links_path, service_config, unique_user_id
from .conftest import wait_for_outcome as wait_until_ended

NAMESPACE = "e2e-outbox-trace"
LINK_API = "link_api"
KEY = "outbox-trace-key"
RELAY = {"MBL_OUTBOX_RELAY_INTERVAL_SECONDS": "1", "MBL_OUTBOX_RELAY_GRACE_SECONDS": "1"}


async def _request_killed_after_deciding(
    services: RunningServices, body: dict[str, Any], user_id: str, pause_file: Path, parent: str
) -> None:
    """Posts the request with the caller's traceparent; link-api pauses once the send is
    decided (before publishing) and is SIGKILLed there."""
    reached = pause_file.with_name(pause_file.name + ".reached")
    reached.unlink(missing_ok=True)
    pause_file.write_text("decided")
    try:
        async with caller(services.api_url, services) as api:
            post = asyncio.create_task(
                api.post(
                    links_path("acme", user_id),
                    json=body,
                    headers={"traceparent": parent, "Idempotency-Key": KEY},
                )
            )
            deadline = time.monotonic() + 60
            while not reached.exists():
                assert not post.done(), f"answered before the window: {post.result().text}"
                assert time.monotonic() < deadline, "never reached the decided window"
                await asyncio.sleep(0.01)
            await asyncio.to_thread(services.kill, LINK_API)
            with pytest.raises(httpx.TransportError):
                await post
    finally:
        pause_file.unlink(missing_ok=True)  # the restarted link-api pauses nowhere


async def _link_requested_headers(bootstrap: str, address: str) -> list[dict[str, str]]:
    """The headers of every LinkRequested record keyed by the address."""
    topic = Topics.for_namespace(NAMESPACE).for_event("LinkRequested")
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    found: list[dict[str, str]] = []
    try:
        for _ in range(5):  # a few fetches: the topic is small
            batches = await consumer.getmany(timeout_ms=2000)
            for records in batches.values():
                for record in records:
                    if record.key == address.encode():
                        found.append({k: v.decode() for k, v in record.headers})
            if found:
                break
    finally:
        await consumer.stop()
    return found


# Four services, a kill and a restart, and the collector (built the first time: minutes).
@pytest.mark.timeout(1200)
async def test_a_relayed_link_request_continues_the_requests_trace(
    infra: Endpoints,
    workdir: Path,
    new_mail_user: Any,
    tmp_path: Path,
) -> None:
    pause_file = tmp_path / "pause"
    trace_id, caller_span = secrets.token_hex(16), secrets.token_hex(8)
    parent = f"00-{trace_id}-{caller_span}-01"
    user, user_id = new_mail_user("outbox-trace"), unique_user_id()
    with running_collector() as collector:
        env = {
            **RELAY,
            "MBL_TEST_PAUSE_FILE": str(pause_file),
            "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint,
        }
        config = service_config(infra, namespace=NAMESPACE, extra_env=env)
        services = await asyncio.to_thread(start_services, config, workdir / NAMESPACE)
        try:
            body = imap_body(infra, user)
            await _request_killed_after_deciding(services, body, user_id, pause_file, parent)
            await asyncio.to_thread(services.restart, LINK_API)
            async with caller(services.api_url, services) as api:
                # The same key names the same link; a replay never publishes (the relay does).
                retried = await api.post(
                    links_path("acme", user_id), json=body, headers={"Idempotency-Key": KEY}
                )
                assert retried.status_code == 202, retried.text
                final = await wait_until_ended(api, retried.json()["status_url"], seconds=60)
                assert final["status"] == "linked", final
            headers = await _link_requested_headers(infra.kafka_bootstrap, user.address)
        finally:
            await asyncio.to_thread(services.stop)
        collector.stop()

        # One LinkRequested, sent by the relay of the restarted link-api, in the caller's trace.
        assert len(headers) == 1, headers
        _, sent_trace, _, _ = headers[0]["traceparent"].split("-")
        assert sent_trace == trace_id
        spans = collector.spans()
        [relayed] = [s for s in spans if s["name"] == "link-api outbox send"]
        assert relayed["traceId"] == trace_id
        assert relayed["parentSpanId"] != caller_span  # the request's server span, lost
        about_link = [
            s
            for s in spans
            if attribute_values(s.get("attributes", [])).get("mailbox_link.link_id")
            == attribute_values(relayed["attributes"])["mailbox_link.link_id"]
        ]
        assert {s["traceId"] for s in about_link} == {trace_id}
        assert {"link-api", "registry", "imap-verifier"} <= {s["_service"] for s in about_link}
        assert any(
            attribute_values(s.get("attributes", [])).get("mailbox_link.link_status") == "linked"
            for s in about_link
        ), json.dumps([(s["_service"], s["name"]) for s in about_link])
