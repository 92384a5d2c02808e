"""Every Prometheus metric of mailbox-link, in one place, and the /metrics endpoint.

Each metric is declared here with its name, help, labels and the values each label may take:
labels are bounded (failure codes, route templates, protocol and provider names), never an
address, an id, a token or free text, so a scrape never shows what a person typed and the
series count stays small. Services record through the small functions below (in handlers,
adapters and entrypoints; domain code imports none of this). The default process collectors
of prometheus-client come along (CPU, memory, open files, start time).
"""

import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mailbox_link_contract.failures import FailureCode

PREFIX = "mailbox_link_"

# Values a label may take. A label's allowed values are either a set or a pattern (for
# values fixed by configuration, such as topic names, which carry the namespace).
FAILURE_CODES = frozenset(code.value for code in FailureCode)
OK = "ok"
NO_CODE = ""
RESULTS = FAILURE_CODES | {OK}
HTTP_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "OTHER"})
UNMATCHED_ROUTE = "unmatched"  # a path no route has: never the raw path (it may hold addresses)
PROTOCOLS = frozenset({"imap", "smtp", "oauth"})
# The built-in OAuth providers by name; every operator-configured OpenID provider is "oidc".
OAUTH_PROVIDERS = frozenset({"google", "microsoft", "yahoo", "aol", "oidc"})
LINK_OUTCOMES = frozenset({"linked", "failed"})
REGISTRY_DECISIONS = frozenset(
    {"reserved", "rejected", "expired", "linked", "reconnecting", "reconnected", "unlinked"}
)
DEAD_LETTER_REASONS = frozenset({"unreadable", "handler_failed"})
RATE_LIMITS = frozenset(
    {
        "user_links",
        "account_links",
        "login_attempts",
        "host_logins",
        "back_off",
        "mailbox_access",  # issue 17: the access endpoint's budget per caller key
        "health_checks",  # issue 17: on-demand health checks per mailbox
        "other",
    }
)
SERVICES = frozenset({"link-api", "registry", "imap-verifier", "oauth-broker", "other"})
ROUTE_TEMPLATE = re.compile(r"^(/[A-Za-z0-9._{}-]*)+$|^unmatched$")
STATUS_CODE = re.compile(r"^[1-5][0-9][0-9]$")
TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
PARTITION = re.compile(r"^[0-9]{1,5}$")

Allowed = frozenset[str] | re.Pattern[str]

# Verifications take from milliseconds (a refused login on loopback) to the verifier's timeout.
VERIFY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0)
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True)
class MetricSpec:
    """A metric's declared labels and the values each may take (for the label audit test)."""

    name: str
    labels: dict[str, Allowed]


HTTP_REQUESTS = Counter(
    "mailbox_link_http_requests_total",
    "HTTP requests answered, by route template, method and status code.",
    ["route", "method", "status"],
)
HTTP_DURATION = Histogram(
    "mailbox_link_http_request_duration_seconds",
    "Time to answer an HTTP request, by route template and method.",
    ["route", "method"],
    buckets=HTTP_BUCKETS,
)
LINKS = Counter(
    "mailbox_link_links_total",
    "Links that reached their final status at link-api: linked, or failed with its code.",
    ["outcome", "code"],
)
VERIFICATION_DURATION = Histogram(
    "mailbox_link_verification_duration_seconds",
    "Time to verify a mailbox login, by protocol and result (ok or the failure code).",
    ["protocol", "result"],
    buckets=VERIFY_BUCKETS,
)
OAUTH_SIGN_INS = Counter(
    "mailbox_link_oauth_sign_ins_total",
    "OAuth sign-ins finished at the broker, by provider and result (ok or the failure code).",
    ["provider", "result"],
)
OAUTH_REFRESHES = Counter(
    "mailbox_link_oauth_token_refreshes_total",
    "OAuth access-token refreshes, by provider and result (ok or the failure code).",
    ["provider", "result"],
)
REGISTRY_DECISIONS_TOTAL = Counter(
    "mailbox_link_registry_decisions_total",
    "Ownership registry decisions, by decision and failure code (empty when none).",
    ["decision", "code"],
)
CONSUMER_LAG = Gauge(
    "mailbox_link_kafka_consumer_lag",
    "Records not yet consumed: log end offset minus the committed offset, per partition owned.",
    ["service", "topic", "partition"],
)
DEAD_LETTERS = Counter(
    "mailbox_link_dead_letters_total",
    "Records copied to the dead-letter topic, by source topic and reason class.",
    ["service", "topic", "reason"],
)
OUTBOX_BACKLOG = Gauge(
    "mailbox_link_outbox_backlog",
    "Link requests on link-api's unsent list (stored, not yet known to be published).",
)
RATE_LIMIT_REFUSALS = Counter(
    "mailbox_link_rate_limit_refusals_total",
    "Attempts refused because a rate limit or a login back-off was spent, by limit name.",
    ["limit"],
)

SPECS: tuple[MetricSpec, ...] = (
    MetricSpec(
        "mailbox_link_http_requests_total",
        {"route": ROUTE_TEMPLATE, "method": HTTP_METHODS, "status": STATUS_CODE},
    ),
    MetricSpec(
        "mailbox_link_http_request_duration_seconds",
        {"route": ROUTE_TEMPLATE, "method": HTTP_METHODS},
    ),
    MetricSpec(
        "mailbox_link_links_total", {"outcome": LINK_OUTCOMES, "code": FAILURE_CODES | {NO_CODE}}
    ),
    MetricSpec(
        "mailbox_link_verification_duration_seconds", {"protocol": PROTOCOLS, "result": RESULTS}
    ),
    MetricSpec(
        "mailbox_link_oauth_sign_ins_total", {"provider": OAUTH_PROVIDERS, "result": RESULTS}
    ),
    MetricSpec(
        "mailbox_link_oauth_token_refreshes_total",
        {"provider": OAUTH_PROVIDERS, "result": RESULTS},
    ),
    MetricSpec(
        "mailbox_link_registry_decisions_total",
        {"decision": REGISTRY_DECISIONS, "code": FAILURE_CODES | {NO_CODE}},
    ),
    MetricSpec(
        "mailbox_link_kafka_consumer_lag",
        {"service": SERVICES, "topic": TOPIC_NAME, "partition": PARTITION},
    ),
    MetricSpec(
        "mailbox_link_dead_letters_total",
        {"service": SERVICES, "topic": TOPIC_NAME, "reason": DEAD_LETTER_REASONS},
    ),
    MetricSpec("mailbox_link_outbox_backlog", {}),
    MetricSpec("mailbox_link_rate_limit_refusals_total", {"limit": RATE_LIMITS}),
)


def is_allowed(allowed: Allowed, value: str) -> bool:
    """Whether `value` is one a label declared with `allowed` may take."""
    if isinstance(allowed, re.Pattern):
        return allowed.fullmatch(value) is not None
    return value in allowed


def _one_of(allowed: frozenset[str], value: str, fallback: str) -> str:
    # Values come from code, but a new one must never become an unbounded label.
    return value if value in allowed else fallback


def result_of(code: str | None) -> str:
    """The result label of an attempt: "ok", or its failure code."""
    if code is None:
        return OK
    return _one_of(FAILURE_CODES, str(code), FailureCode.INTERNAL_ERROR.value)


def service_label(name: str) -> str:
    """The service label of a service name (bounded)."""
    return _one_of(SERVICES, name, "other")


def provider_label(provider: str) -> str:
    """A built-in provider's name, or "oidc" for any operator-configured one."""
    return _one_of(OAUTH_PROVIDERS, str(provider).lower(), "oidc")


# -- recording -------------------------------------------------------------------------------


def link_finished(code: str | None) -> None:
    """Counts a link that reached its final status: linked (no code) or failed with `code`."""
    if code is None:
        LINKS.labels("linked", NO_CODE).inc()
    else:
        LINKS.labels("failed", result_of(code)).inc()


def verification_finished(protocol: str, code: str | None, seconds: float) -> None:
    """Observes one verification of `protocol` that ended ok (`code` None) or with `code`."""
    protocol = _one_of(PROTOCOLS, protocol.lower(), "imap")
    VERIFICATION_DURATION.labels(protocol, result_of(code)).observe(seconds)


@contextmanager
def timed_verification(
    protocol: str, code_of: Callable[[BaseException], str | None]
) -> Iterator[None]:
    """Times the block as one verification of `protocol`; an exception is its failure, named
    by `code_of` (None for exceptions that are not a verdict, such as a cancellation)."""
    started = time.perf_counter()
    try:
        yield
    except BaseException as exc:
        code = code_of(exc)
        if code is not None:
            verification_finished(protocol, code, time.perf_counter() - started)
        raise
    verification_finished(protocol, None, time.perf_counter() - started)


def oauth_sign_in(provider: str, code: str | None) -> None:
    """Counts a finished OAuth sign-in: ok, or failed with `code`."""
    OAUTH_SIGN_INS.labels(provider_label(provider), result_of(code)).inc()


def oauth_refresh(provider: str, code: str | None) -> None:
    """Counts an access-token refresh: ok, or failed with `code`."""
    OAUTH_REFRESHES.labels(provider_label(provider), result_of(code)).inc()


def registry_decision(decision: str, code: str | None = None) -> None:
    """Counts a registry decision (reserved, rejected with its code, linked, released...)."""
    decision = _one_of(REGISTRY_DECISIONS, decision, "rejected")
    label = NO_CODE if code is None else result_of(code)
    REGISTRY_DECISIONS_TOTAL.labels(decision, label).inc()


def consumer_lag(service: str, topic: str, partition: int, lag: int) -> None:
    """Sets the lag of one owned partition of a consumer group."""
    CONSUMER_LAG.labels(service_label(service), _topic(topic), str(partition)).set(max(lag, 0))


def forget_consumer_lag(service: str, topic: str, partition: int) -> None:
    """Drops a partition's lag series once this process no longer owns it."""
    with suppress(KeyError):
        CONSUMER_LAG.remove(service_label(service), _topic(topic), str(partition))


def dead_lettered(service: str, topic: str, reason: str) -> None:
    """Counts a dead-lettered record; `reason` is a class (unreadable, handler_failed)."""
    reason = _one_of(DEAD_LETTER_REASONS, reason, "unreadable")
    DEAD_LETTERS.labels(service_label(service), _topic(topic), reason).inc()


def outbox_backlog(count: int) -> None:
    """Sets the length of link-api's unsent list."""
    OUTBOX_BACKLOG.set(count)


def rate_limit_refused(limit: str) -> None:
    """Counts an attempt refused by the limit named `limit`."""
    RATE_LIMIT_REFUSALS.labels(_one_of(RATE_LIMITS, limit, "other")).inc()


def _topic(topic: str) -> str:
    return topic if TOPIC_NAME.fullmatch(topic) else "other"


# -- exposition ------------------------------------------------------------------------------


def exposition() -> bytes:
    """The registry in the text exposition format."""
    return generate_latest(REGISTRY)


async def metrics_asgi(scope: Scope, receive: Receive, send: Send) -> None:
    """An ASGI app answering GET /metrics with the text format; open, like /healthz (it holds
    no secret, address or id: see the label sets above)."""
    body = exposition()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", CONTENT_TYPE_LATEST.encode()),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def metrics_endpoint(_: Request) -> Response:
    """The /metrics route of a Starlette or FastAPI app."""
    return Response(exposition(), media_type=CONTENT_TYPE_LATEST)


class HttpMetrics:
    """ASGI middleware counting and timing each HTTP request by its route TEMPLATE (the route
    the app matched, so /v1/accounts/{account_id}/... never the raw path), method and status
    code; a path no route matched is "unmatched"."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client sees if the app raises before answering

        async def counting_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            route = self._route(scope)
            method = _one_of(HTTP_METHODS, str(scope.get("method", "")).upper(), "OTHER")
            HTTP_REQUESTS.labels(route, method, str(status)).inc()
            HTTP_DURATION.labels(route, method).observe(time.perf_counter() - started)

    @staticmethod
    def _route(scope: Scope) -> str:
        # Starlette's router notes the route that matched in the (shared) scope dict.
        path = getattr(scope.get("route"), "path", None)
        if isinstance(path, str) and ROUTE_TEMPLATE.fullmatch(path):
            return path
        return UNMATCHED_ROUTE


# -- health checks run by the verifiers (issue 17, i17-checks) --------------------------------

HEALTH_CHECK_VERIFIERS = frozenset({"imap-verifier", "oauth-broker"})
HEALTH_CHECKS = Counter(
    "mailbox_link_health_checks_total",
    "Health checks of linked mailboxes run by a verifier, by verifier and outcome (ok or the "
    "failure code).",
    ["verifier", "outcome"],
)
HEALTH_CHECK_DURATION = Histogram(
    "mailbox_link_health_check_duration_seconds",
    "Time to run one health check (a refresh when due, IMAP and SMTP logins), by verifier and "
    "outcome (ok or the failure code).",
    ["verifier", "outcome"],
    buckets=VERIFY_BUCKETS,
)
SPECS = (
    *SPECS,
    MetricSpec(
        "mailbox_link_health_checks_total",
        {"verifier": HEALTH_CHECK_VERIFIERS, "outcome": RESULTS},
    ),
    MetricSpec(
        "mailbox_link_health_check_duration_seconds",
        {"verifier": HEALTH_CHECK_VERIFIERS, "outcome": RESULTS},
    ),
)


def health_check_finished(verifier: str, code: str | None, seconds: float) -> None:
    """Counts and times one health check run by `verifier`: ok (`code` None) or failed with
    `code`."""
    verifier = _one_of(HEALTH_CHECK_VERIFIERS, verifier, "imap-verifier")
    outcome = result_of(code)
    HEALTH_CHECKS.labels(verifier, outcome).inc()
    HEALTH_CHECK_DURATION.labels(verifier, outcome).observe(seconds)


# -- mailbox health (issue 17, registry) -------------------------------------------------------

HEALTH_CHECK_REASONS = frozenset({"scheduled", "on_demand"})
HEALTH_CHECK_OUTCOMES = frozenset({"ok", "credentials_refused", "failed", "ignored"})
MAILBOX_HEALTH_STATES = frozenset({"active", "degraded", "reconnect_required"})

HEALTH_CHECKS_REQUESTED = Counter(
    "mailbox_link_health_checks_requested_total",
    "Mailbox health checks the registry requested, by reason (scheduled or on_demand).",
    ["reason"],
)
HEALTH_CHECK_RESULTS = Counter(
    "mailbox_link_health_check_results_total",
    "Mailbox health check results the registry received, by outcome (ok, credentials_refused, "
    "failed, or ignored: an unknown, old or repeated check, or a mailbox no longer linked).",
    ["outcome"],
)
MAILBOX_HEALTH_CHANGES = Counter(
    "mailbox_link_mailbox_health_changes_total",
    "Changes of a linked mailbox's health decided by the registry, by the new state.",
    ["health"],
)
SPECS = (
    *SPECS,
    MetricSpec("mailbox_link_health_checks_requested_total", {"reason": HEALTH_CHECK_REASONS}),
    MetricSpec("mailbox_link_health_check_results_total", {"outcome": HEALTH_CHECK_OUTCOMES}),
    MetricSpec("mailbox_link_mailbox_health_changes_total", {"health": MAILBOX_HEALTH_STATES}),
)


def health_check_requested(reason: str) -> None:
    """Counts a health check requested for `reason`."""
    HEALTH_CHECKS_REQUESTED.labels(_one_of(HEALTH_CHECK_REASONS, reason, "scheduled")).inc()


def health_check_result(outcome: str) -> None:
    """Counts a health check result by what it was."""
    HEALTH_CHECK_RESULTS.labels(_one_of(HEALTH_CHECK_OUTCOMES, outcome, "failed")).inc()


def mailbox_health_changed(health: str) -> None:
    """Counts a change of a mailbox's health to `health`."""
    MAILBOX_HEALTH_CHANGES.labels(_one_of(MAILBOX_HEALTH_STATES, health, "degraded")).inc()


# -- issue 17, access: the registry's mailbox access endpoint (docs/adr/0023) -----------------

ACCESS_AUTHS = frozenset({"password", "oauth", "unknown"})  # unknown: refused before it was known
ACCESS_OUTCOMES = frozenset(
    {"granted", "not_found", "reconnect_required", "rate_limited", "unavailable"}
)
MAILBOX_ACCESS = Counter(
    "mailbox_link_mailbox_access_total",
    "Asks for a linked mailbox's credentials at the registry's access endpoint, by the "
    "mailbox's auth and the outcome (granted, or why not).",
    ["auth", "outcome"],
)
SPECS = (
    *SPECS,
    MetricSpec(
        "mailbox_link_mailbox_access_total", {"auth": ACCESS_AUTHS, "outcome": ACCESS_OUTCOMES}
    ),
)


def mailbox_access(auth: str, outcome: str) -> None:
    """Counts one ask at the access endpoint."""
    MAILBOX_ACCESS.labels(
        _one_of(ACCESS_AUTHS, auth, "unknown"), _one_of(ACCESS_OUTCOMES, outcome, "unavailable")
    ).inc()
