"""Tracing: the endpoint settings, W3C context through Kafka headers, the HTTP server span."""

from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from mailbox_link_shared.crypto import generate_key
from mailbox_link_shared.settings import ServiceSettings, environment_variables
from mailbox_link_shared.tracing import (
    TracingMiddleware,
    configure_tracing,
    consumer_span,
    producer_span,
    span,
    traces_endpoint,
)

_EXPORTER = InMemorySpanExporter()
_ADDED: list[bool] = []


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """An SDK provider exporting to memory; the global provider can be set only once per
    process, so it is installed by the first test (of any suite) and kept, and this exporter
    is added to it once."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    if not _ADDED:
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        _ADDED.append(True)
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()


def _settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> ServiceSettings:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return ServiceSettings(encryption_keys={"k1": generate_key()})


def test_tracing_is_off_without_an_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings(monkeypatch)
    assert traces_endpoint(settings) == ""
    assert configure_tracing(settings, "registry") is False


def test_an_empty_endpoint_as_a_config_map_sets_it_leaves_tracing_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The manifests' ConfigMap ships OTEL_EXPORTER_OTLP_ENDPOINT= (empty): set, but off.
    settings = _settings(
        monkeypatch, OTEL_EXPORTER_OTLP_ENDPOINT="", OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=""
    )
    assert traces_endpoint(settings) == ""
    assert configure_tracing(settings, "registry") is False


def test_the_tracing_settings_are_read_from_the_standard_names_not_mbl_ones() -> None:
    names = environment_variables(ServiceSettings)
    assert {"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"} <= names
    assert {"MBL_LOG_FORMAT", "MBL_NAMESPACE", "MBL_STOP_GRACE_SECONDS"} <= names
    assert not any(name.startswith("MBL_OTEL") for name in names)


def test_the_endpoints_follow_the_opentelemetry_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    base = _settings(monkeypatch, OTEL_EXPORTER_OTLP_ENDPOINT="http://collector:4318/")
    assert traces_endpoint(base) == "http://collector:4318/v1/traces"
    both = _settings(
        monkeypatch,
        OTEL_EXPORTER_OTLP_ENDPOINT="http://collector:4318",
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT="http://traces:9999/t",
    )
    assert traces_endpoint(both) == "http://traces:9999/t"


def _only(spans: InMemorySpanExporter, name: str) -> ReadableSpan:
    found = [s for s in spans.get_finished_spans() if s.name == name]
    assert len(found) == 1, [s.name for s in spans.get_finished_spans()]
    return found[0]


def test_the_consumer_span_is_the_child_of_the_producer_span(spans: InMemorySpanExporter) -> None:
    with producer_span("ns.link-requests.v1", "LinkRequested", "e-1", "link-1") as headers:
        pass
    assert set(headers) >= {"traceparent"}
    record_headers = [
        ("event-type", b"LinkRequested"),
        *((k, v.encode()) for k, v in headers.items()),
    ]
    with (
        consumer_span("ns.link-requests.v1", record_headers, "LinkRequested", "e-1", "link-1"),
        span("inner"),
    ):
        pass
    producer = _only(spans, "send ns.link-requests.v1")
    consumer = _only(spans, "process ns.link-requests.v1")
    inner = _only(spans, "inner")
    assert producer.kind is SpanKind.PRODUCER
    assert consumer.kind is SpanKind.CONSUMER
    assert consumer.context is not None
    assert producer.context is not None
    assert consumer.context.trace_id == producer.context.trace_id
    assert consumer.parent is not None
    assert consumer.parent.span_id == producer.context.span_id
    assert inner.parent is not None
    assert inner.parent.span_id == consumer.context.span_id
    attributes = dict(consumer.attributes or {})
    assert attributes["messaging.system"] == "kafka"
    assert attributes["messaging.destination.name"] == "ns.link-requests.v1"
    assert attributes["messaging.operation.type"] == "process"
    assert attributes["mailbox_link.event_type"] == "LinkRequested"
    assert attributes["mailbox_link.link_id"] == "link-1"


def test_a_record_without_traceparent_starts_a_new_trace(spans: InMemorySpanExporter) -> None:
    with span("unrelated"), consumer_span("t", [("event-type", b"X")], "X", "e", "l"):
        pass
    consumer = _only(spans, "process t")
    assert consumer.parent is None
    assert consumer.context is not None
    assert consumer.context.trace_id != _only(spans, "unrelated").context.trace_id


def test_a_garbled_traceparent_starts_a_new_trace(spans: InMemorySpanExporter) -> None:
    with consumer_span("t", [("traceparent", b"00-nonsense\xff")], "X", "e", "l"):
        pass
    assert _only(spans, "process t").parent is None


async def test_the_server_span_names_the_route_template_never_the_path(
    spans: InMemorySpanExporter,
) -> None:
    app = FastAPI(telemetry={"tracing": False})  # as build_http_app: only our span

    @app.get("/v1/mailboxes/{mailbox}")
    async def mailbox(mailbox: str) -> dict[str, str]:
        return {"ok": "yes"}

    app.add_middleware(TracingMiddleware)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.get("/v1/mailboxes/someone@example.org")).status_code == 200
        assert (await client.get("/nothing/someone@example.org")).status_code == 404
    served = _only(spans, "GET /v1/mailboxes/{mailbox}")
    assert served.kind is SpanKind.SERVER
    assert dict(served.attributes or {}) == {
        "http.request.method": "GET",
        "http.route": "/v1/mailboxes/{mailbox}",
        "http.response.status_code": 200,
    }
    missing = _only(spans, "GET unmatched")
    assert dict(missing.attributes or {})["http.response.status_code"] == 404
    for each in spans.get_finished_spans():
        assert "example.org" not in str(dict(each.attributes or {})) + each.name
