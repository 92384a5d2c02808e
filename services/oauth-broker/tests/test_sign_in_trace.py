"""The broker's spans: the callback and the confirmation continue the link request's trace
(kept with the sign-in session), a refresh is a span of its own, and none names a secret."""

import json
from datetime import timedelta

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from pydantic import SecretStr

from broker_fakes import (
    ADDRESS,
    ALICE,
    JAR,
    FakeClock,
    FakeProvider,
    InMemoryBrokerStore,
    fake_deps,
    invalid_grant,
    requested,
    reserved,
    start_in_browser,
)
from mailbox_link_contract.events import (
    AuthorizationRequired,
    MailboxLinked,
    MailboxLinkedData,
    ProviderType,
)
from mailbox_link_shared.publishing import RecordingPublisher
from mailbox_link_shared.tracing import current_ids, span
from oauth_broker import handlers
from oauth_broker.adapters.oauth_client import OAuthApp
from oauth_broker.domain.providers import GOOGLE
from oauth_broker.handlers import BrokerDeps, CallbackResult

APP = OAuthApp(ProviderType.GOOGLE, "client", SecretStr("secret"), "https://cb.test/", GOOGLE)
_EXPORTER = InMemorySpanExporter()
_ADDED: list[bool] = []


@pytest.fixture
def spans() -> InMemorySpanExporter:
    """Spans in memory, added once to whichever SDK provider the process has (set once)."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    if not _ADDED:
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        _ADDED.append(True)
    _EXPORTER.clear()
    return _EXPORTER


@pytest.fixture
def provider() -> FakeProvider:
    return FakeProvider(APP, signed_in_as=(ADDRESS,))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def deps(provider: FakeProvider, clock: FakeClock) -> BrokerDeps:
    return fake_deps(provider, clock=clock)


def _named(spans: InMemorySpanExporter, name: str) -> ReadableSpan:
    [found] = [s for s in spans.get_finished_spans() if s.name == name]
    return found


def _trace_id(found: ReadableSpan) -> str:
    assert found.context is not None
    return f"{found.context.trace_id:032x}"


async def _signed_in(deps: BrokerDeps) -> tuple[str, str]:
    """The request consumed in one trace, the callback in a browser's request of another;
    returns the request's trace id and the confirmation code."""
    with span("process link-requests", SpanKind.CONSUMER):
        request_ids = current_ids()
        await handlers.when_link_requested_open_session(requested("l1"), deps)
    await handlers.when_link_reserved_offer_sign_in(reserved("l1"), deps)
    assert isinstance(deps.publisher, RecordingPublisher)
    offer = deps.publisher.events[-1]
    assert isinstance(offer, AuthorizationRequired)
    state = await start_in_browser(deps, offer)
    with span("GET /v1/oauth/callback", SpanKind.SERVER):
        outcome = await handlers.complete_sign_in(state, "code", None, "", deps, JAR)
    assert outcome.result is CallbackResult.VERIFIED
    assert outcome.confirmation_code is not None
    assert request_ids is not None
    return request_ids[0], outcome.confirmation_code


async def test_the_callback_and_the_confirmation_continue_the_link_requests_trace(
    spans: InMemorySpanExporter, deps: BrokerDeps
) -> None:
    request_trace, code = await _signed_in(deps)
    with span("POST /sign-ins/confirm", SpanKind.SERVER):
        assert await handlers.confirm_sign_in(ALICE, code, deps) is None

    callback = _named(spans, "oauth callback")
    confirm = _named(spans, "oauth confirm")
    request = _named(spans, "process link-requests")
    for continued, http_name in ((callback, "GET /v1/oauth/callback"),
                                 (confirm, "POST /sign-ins/confirm")):  # fmt: skip
        assert _trace_id(continued) == request_trace
        assert continued.parent is not None
        assert request.context is not None
        assert continued.parent.span_id == request.context.span_id
        # Linked to the browser's (or the product's) HTTP request, which is its own trace.
        http = _named(spans, http_name)
        assert [_trace_id_of(link.context) for link in continued.links] == [_trace_id(http)]
        assert _trace_id(http) != request_trace
        assert continued.attributes is not None
        assert continued.attributes["mailbox_link.link_id"] == "l1"
        assert continued.attributes["oauth.provider"] == "google"
    assert callback.attributes is not None
    assert confirm.attributes is not None
    assert callback.attributes["oauth.result"] == "verified"
    assert confirm.attributes["oauth.result"] == "confirmed"
    _nothing_secret(spans, code)


async def test_a_session_stored_before_tracing_still_completes(
    spans: InMemorySpanExporter, deps: BrokerDeps
) -> None:
    await handlers.when_link_requested_open_session(requested("l1"), deps)  # outside a trace
    await handlers.when_link_reserved_offer_sign_in(reserved("l1"), deps)
    assert isinstance(deps.store, InMemoryBrokerStore)
    assert deps.store.sessions["l1"].session is not None
    assert deps.store.sessions["l1"].session.trace_context == ()
    assert isinstance(deps.publisher, RecordingPublisher)
    offer = deps.publisher.events[-1]
    assert isinstance(offer, AuthorizationRequired)
    state = await start_in_browser(deps, offer)
    with span("GET /v1/oauth/callback", SpanKind.SERVER):
        outcome = await handlers.complete_sign_in(state, "code", None, "", deps, JAR)
    assert outcome.result is CallbackResult.VERIFIED
    callback = _named(spans, "oauth callback")
    http = _named(spans, "GET /v1/oauth/callback")
    assert http.context is not None
    assert callback.parent is not None
    assert callback.parent.span_id == http.context.span_id  # a child of the request, as usual


async def test_a_refresh_is_a_span_with_its_result(
    spans: InMemorySpanExporter, deps: BrokerDeps, provider: FakeProvider, clock: FakeClock
) -> None:
    _, code = await _signed_in(deps)
    assert await handlers.confirm_sign_in(ALICE, code, deps) is None
    data = MailboxLinkedData(
        link_id="l1", mailbox_id="m1", owner=ALICE, address=ADDRESS, provider=ProviderType.GOOGLE
    )
    await handlers.when_mailbox_linked_keep_fresh(
        MailboxLinked(correlation_id="l1", producer="registry", data=data), deps
    )
    clock.advance(timedelta(minutes=56))
    await handlers.refresh_due_grants(deps)
    provider.refresh_error = invalid_grant()
    clock.advance(timedelta(minutes=56))
    await handlers.refresh_due_grants(deps)

    refreshes = [s for s in spans.get_finished_spans() if s.name == "oauth token refresh"]
    assert [dict(s.attributes or {}).get("oauth.result") for s in refreshes] == [
        "ok",
        "reconnect_required",
    ]
    for refresh in refreshes:
        assert refresh.parent is None  # a timer's work: a trace of its own
        assert dict(refresh.attributes or {})["mailbox_link.link_id"] == "l1"
    _nothing_secret(spans, code, "access-2")


def _trace_id_of(context: trace.SpanContext | None) -> str:
    assert context is not None
    return f"{context.trace_id:032x}"


def _nothing_secret(spans: InMemorySpanExporter, *more: str) -> None:
    """No address, token, confirmation code or binding cookie in any span's name or attribute."""
    for found in spans.get_finished_spans():
        text = json.dumps([found.name, dict(found.attributes or {})])
        for secret in (ADDRESS, "access-1", "refresh-1", *JAR.values(), *more):
            assert secret not in text, (secret, found.name)
