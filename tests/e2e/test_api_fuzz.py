"""Property-based fuzzing of link-api, the registry and the OAuth broker's callback from their
OpenAPI schemas: no 5xx, and no made-up sign-in state ever completes a sign-in.

Runs link-api, the registry and the OAuth broker, in their own namespace: without a verifier,
no generated host name or address is ever connected to, whatever the fuzzer invents (the broker
only talks to a provider and a mail server for a state it issued, which no fuzzer can guess).
"""

import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.core.result import Ok

from localinfra.services import RunningServices, ServiceConfig, start_services
from localinfra.stack import Endpoints

from .conftest import service_config

MAX_EXAMPLES = 60  # per operation; bounded so the suite stays fast


@pytest.fixture(scope="module")
def fuzz_config(infra: Endpoints) -> ServiceConfig:
    return service_config(infra, namespace="e2e-fuzz")


@pytest.fixture(scope="module")
def fuzz_services(fuzz_config: ServiceConfig, workdir: Path) -> Iterator[RunningServices]:
    running = start_services(
        fuzz_config, workdir / "services-fuzz", modules=("registry", "link_api", "oauth_broker")
    )
    try:
        yield running
    finally:
        running.stop()


@pytest.mark.parametrize(
    ("service", "operation_count"),
    # link-api: links x2, mailboxes x2, providers x2; registry: 6 routes, mailbox access and
    # on-demand checks; the broker: start, callback, the product's confirm and the registry's
    # token route
    [("api_url", 6), ("registry_url", 8), ("broker_url", 4)],
)
def test_no_input_gets_a_server_error(
    fuzz_services: RunningServices,
    fuzz_config: ServiceConfig,
    service: str,
    operation_count: int,
) -> None:
    base_url = getattr(fuzz_services, service)
    schema = _schema(fuzz_services, base_url)
    # An operation the schema does not describe validly is an Err: the count below catches it.
    operations = [r.ok() for r in schema.get_all_operations() if isinstance(r, Ok)]
    assert len(operations) == operation_count
    for operation in operations:
        # The broker's browser pages answer in HTML: the test below fuzzes them.
        if not operation.path.startswith("/v1/oauth/"):
            key = _key_for(fuzz_services, fuzz_config, service, operation)
            headers = {"Authorization": f"Bearer {key}"}
            _fuzz(operation, base_url, headers)


def _schema(services: RunningServices, base_url: str) -> Any:
    # /openapi.json answers only a valid key (docs/adr/0017).
    headers = {"Authorization": f"Bearer {services.caller_token}"}
    return schemathesis.openapi.from_url(f"{base_url}/openapi.json", headers=headers)


def _key_for(services: RunningServices, config: ServiceConfig, service: str, operation: Any) -> str:
    """The key granted the operation's scope, so the fuzzer reaches the handler."""
    if operation.path.endswith("/access-token"):
        return config.registry_broker_token  # the registry's own key (token_issue)
    if service != "registry_url":
        return services.caller_token  # links, and sign_in_confirm at the broker
    if operation.path.endswith("/owner"):
        return services.sign_in_token
    if operation.path.endswith("/access"):
        return services.mailer_token  # mailbox_access
    return services.operator_token  # operators may call every other registry route


def _fuzz(operation: Any, base_url: str, headers: dict[str, str]) -> None:
    @given(case=operation.as_strategy())
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def never_a_server_error(case: Any) -> None:
        response = case.call(base_url=base_url, headers=headers, timeout=10)
        assert response.status_code < 500, (operation.label, response.status_code, response.text)
        if response.status_code >= 400:
            body = response.json()
            assert body["error"], body
            assert body["message"], body

    never_a_server_error()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_made_up_state_completes_a_sign_in(
    fuzz_services: RunningServices, mode: GenerationMode
) -> None:
    base_url = fuzz_services.broker_url
    schema = _schema(fuzz_services, base_url)
    operations = {r.ok().label: r.ok() for r in schema.get_all_operations() if isinstance(r, Ok)}
    # The browser-facing routes (no token), the product's confirm (its service key) and the
    # registry's token route (its own key).
    assert sorted(operations) == [
        "GET /v1/oauth/callback",
        "GET /v1/oauth/start/{token}",
        "POST /v1/accounts/{account_id}/users/{user_id}/sign-ins/confirm",
        "POST /v1/internal/grants/{link_id}/access-token",
    ]
    callback = operations["GET /v1/oauth/callback"]

    @given(case=callback.as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def refused(case: Any) -> None:
        response = case.call(base_url=base_url, timeout=10, allow_redirects=False)
        status = response.status_code
        assert status < 500, (case.query, status, response.text)
        # Whatever the code, error or description: a state the broker did not issue is refused
        # (400), or the query is malformed (422); it never verifies or fails a link.
        assert status in (400, 422), (case.query, status, response.text)
        if mode is GenerationMode.POSITIVE:
            assert status == 400, (case.query, status, response.text)
        if status == 400:
            # An unknown state, or a parameter longer than any the broker issues (the page
            # says `malformed`), or an RFC 9207 `iss` of another issuer: refused all the same.
            assert 'data-result="refused"' in response.text, response.text
            assert re.search(
                r'data-code="(unknown_state|malformed|issuer_mismatch)"', response.text
            ), response.text
        else:
            body = response.json()
            assert body["error"] == "invalid_request", body
            assert body["message"], body

    refused()
    # States shaped like the broker's own (32 random bytes, URL-safe), with a code or an error.
    for query in (
        {"state": secrets.token_urlsafe(32), "code": secrets.token_urlsafe(32)},
        {"state": secrets.token_urlsafe(32), "error": "access_denied"},
    ):
        response = httpx.get(f"{base_url}/v1/oauth/callback", params=query, timeout=10)
        assert response.status_code == 400, response.text
        assert 'data-code="unknown_state"' in response.text, response.text
    # A made-up start token shaped like the broker's own never starts a sign-in either.
    response = httpx.get(f"{base_url}/v1/oauth/start/{secrets.token_urlsafe(32)}", timeout=10)
    assert response.status_code == 400, response.text
    assert 'data-code="unknown_state"' in response.text, response.text
