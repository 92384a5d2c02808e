"""OpenTelemetry tracing for every service: set-up from settings, spans, Kafka header context.

Tracing is on only when an OTLP endpoint is configured (the standard
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, or OTEL_EXPORTER_OTLP_ENDPOINT + "/v1/traces"); spans then go
over OTLP/HTTP (protobuf) through a BatchSpanProcessor, flushed by `flush_tracing`, the last
stop hook of every service (SIGTERM runs the stop hooks). With no endpoint no provider is
installed: the
API's spans are no-ops, but a context that came in a record's headers still passes through, so
logs keep the trace id and the next record keeps the traceparent.

The context crosses Kafka as W3C `traceparent` / `tracestate` record headers. Attributes are
bounded and never carry a secret, an address, a token or a host of a user's server: only
topics, event types, link and event ids, protocols, ports, outcomes and HTTP route templates.
"""

import asyncio
import contextlib
import logging
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from mailbox_link_shared.settings import ServiceSettings

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Send
    from starlette.types import Scope as AsgiScope

logger = logging.getLogger(__name__)

TRACER_NAME = "mailbox_link"
# Only the W3C headers: a baggage header would let a producer smuggle values into every span.
_PROPAGATOR = TraceContextTextMapPropagator()
TRACE_HEADERS = ("traceparent", "tracestate")
# Within the stop grace a platform gives: a collector that is away must not hold up the stop.
FLUSH_TIMEOUT_MILLIS = 3000

# Attribute keys, one place (docs/notes/issue16-tracing.md lists them).
EVENT_TYPE = "mailbox_link.event_type"
LINK_ID = "mailbox_link.link_id"
EVENT_ID = "messaging.message.id"
DECISION = "mailbox_link.decision"  # the registry's: reserved, rejected, linked, ...
LINK_STATUS = "mailbox_link.link_status"  # link-api's view after an event: linked, failed, ...


def traces_endpoint(settings: ServiceSettings) -> str:
    """The OTLP/HTTP traces URL the settings name, or "" when tracing is off."""
    if settings.otel_exporter_otlp_traces_endpoint:
        return settings.otel_exporter_otlp_traces_endpoint
    if settings.otel_exporter_otlp_endpoint:
        return settings.otel_exporter_otlp_endpoint.rstrip("/") + "/v1/traces"
    return ""


def configure_tracing(settings: ServiceSettings, service_name: str) -> bool:
    """Installs the exporting tracer provider when an endpoint is configured; True if it did."""
    endpoint = traces_endpoint(settings)
    if not endpoint:
        return False
    # Imported here: a service without tracing never loads the SDK or the exporter.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # shutdown_on_exit (the default) flushes the batch at interpreter exit.
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    trace.set_tracer_provider(provider)
    logger.info("tracing on: spans go to %s", endpoint)
    return True


async def flush_tracing() -> None:
    """Sends the spans still batched: the last stop hook of a service.

    Needed: uvicorn re-raises the SIGTERM it caught once it has shut down, so the process ends
    by the signal and the SDK's exit hook never runs."""
    # force_flush, not shutdown: an app started again in the same process (tests) still traces.
    flush = getattr(trace.get_tracer_provider(), "force_flush", None)  # the SDK's only
    if callable(flush):
        await asyncio.to_thread(flush, FLUSH_TIMEOUT_MILLIS)


def tracer() -> trace.Tracer:
    """The tracer every span of mailbox-link comes from."""
    return trace.get_tracer(TRACER_NAME)


@contextlib.contextmanager
def span(
    name: str,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, Any] | None = None,
    links: Sequence[trace.Link] = (),
) -> Iterator[Span]:
    """A span as the current one; an exception escaping it marks it as an error by type only
    (its message may carry what a caller sent)."""
    with tracer().start_as_current_span(
        name,
        kind=kind,
        attributes=dict(attributes or {}),
        links=list(links),
        record_exception=False,
        set_status_on_exception=False,
    ) as current:
        try:
            yield current
        except BaseException as exc:
            current.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise


def set_attributes(**attributes: Any) -> None:
    """Adds attributes to the current span (a no-op when there is none)."""
    trace.get_current_span().set_attributes(attributes)


def inject_headers(headers: MutableMapping[str, str]) -> None:
    """Writes the current context as W3C traceparent/tracestate into Kafka headers."""
    _PROPAGATOR.inject(headers)


def current_trace_headers() -> dict[str, str]:
    """The current context as W3C traceparent/tracestate values, to store with work that a
    later process carries on (link-api's outbox, the broker's sign-in session); empty when
    there is no current trace."""
    headers: dict[str, str] = {}
    inject_headers(headers)
    return headers


@contextlib.contextmanager
def continued_span(
    name: str, carried: Mapping[str, str], attributes: Mapping[str, Any] | None = None
) -> Iterator[Span]:
    """A span that continues the trace `carried` names (headers stored earlier by
    `current_trace_headers`), linked to the span current here (an unrelated HTTP request, a
    timer's round); with nothing usable carried (work stored before tracing) it is a child of
    the current span, as `span` makes."""
    parent = context_from_headers([(k, v.encode("ascii", "replace")) for k, v in carried.items()])
    if not trace.get_current_span(parent).get_span_context().is_valid:
        with span(name, attributes=attributes) as current:
            yield current
        return
    here = trace.get_current_span().get_span_context()
    links = [trace.Link(here)] if here.is_valid else []
    token = otel_context.attach(parent)
    try:
        with span(name, attributes=attributes, links=links) as current:
            yield current
    finally:
        otel_context.detach(token)


def context_from_headers(headers: Sequence[tuple[str, bytes]]) -> otel_context.Context:
    """The context a record's traceparent/tracestate headers carry; an empty context (so a new
    trace) when there are none, as from producers older than tracing."""
    carrier = {
        key: value.decode("ascii", "replace")
        for key, value in headers
        if key in TRACE_HEADERS and value is not None
    }
    return _PROPAGATOR.extract(carrier, context=otel_context.Context())


def messaging_attributes(
    topic: str, operation: str, event_type: str, event_id: str, link_id: str
) -> dict[str, Any]:
    """The messaging.* semantic attributes of a Kafka span, plus the event's type and link."""
    return {
        "messaging.system": "kafka",
        "messaging.destination.name": topic,
        "messaging.operation.type": operation,
        "messaging.operation.name": operation,
        EVENT_ID: event_id,
        EVENT_TYPE: event_type,
        LINK_ID: link_id,
    }


@contextlib.contextmanager
def producer_span(
    topic: str, event_type: str, event_id: str, link_id: str
) -> Iterator[dict[str, str]]:
    """A PRODUCER span `send <topic>`; yields the trace headers to put on the record, so the
    consumer's span becomes its child."""
    attributes = messaging_attributes(topic, "send", event_type, event_id, link_id)
    with span(f"send {topic}", SpanKind.PRODUCER, attributes):
        headers: dict[str, str] = {}
        inject_headers(headers)
        yield headers


@contextlib.contextmanager
def consumer_span(
    topic: str,
    headers: Sequence[tuple[str, bytes]],
    event_type: str,
    event_id: str,
    link_id: str,
) -> Iterator[Span]:
    """A CONSUMER span `process <topic>`, child of the producer span the record's headers name
    (the root of a new trace when they name none), current while the handler runs."""
    token = otel_context.attach(context_from_headers(headers))
    try:
        attributes = messaging_attributes(topic, "process", event_type, event_id, link_id)
        with span(f"process {topic}", SpanKind.CONSUMER, attributes) as current:
            yield current
    finally:
        otel_context.detach(token)


def current_ids() -> tuple[str, str] | None:
    """(trace_id, span_id) in hex of the current span context, or None when there is none."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


class TracingMiddleware:
    """A SERVER span per HTTP request, named `<method> <route template>`, with the method, the
    route template and the status: never the raw path (it carries addresses) nor a query.

    A caller's traceparent header is honoured, so a product's own trace can continue here.
    """

    def __init__(self, app: "ASGIApp") -> None:
        self.app = app

    async def __call__(self, scope: "AsgiScope", receive: "Receive", send: "Send") -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = str(scope.get("method", "GET"))
        headers = [
            (key.decode("latin-1"), value)
            for key, value in scope.get("headers", [])
            if key.decode("latin-1") in TRACE_HEADERS
        ]
        token = otel_context.attach(context_from_headers(headers))
        try:
            with span(method, SpanKind.SERVER, {"http.request.method": method}) as current:

                async def recording_send(message: "Message") -> None:
                    if message["type"] == "http.response.start":
                        status = int(message["status"])
                        current.set_attribute("http.response.status_code", status)
                        if status >= 500:
                            current.set_status(Status(StatusCode.ERROR, str(status)))
                    await send(message)

                try:
                    await self.app(scope, receive, recording_send)
                finally:
                    route = getattr(scope.get("route"), "path", None)
                    # No route matched (a 404): a fixed name, not the path that was asked for.
                    template = route if isinstance(route, str) else "unmatched"
                    current.set_attribute("http.route", template)
                    current.update_name(f"{method} {template}")
        finally:
            otel_context.detach(token)
