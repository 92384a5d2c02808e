"""Property-based fuzzing of link-api and the registry from their OpenAPI schemas: no 5xx.

Runs link-api and the registry only, in their own namespace: without a verifier, no generated
host name or address is ever connected to, whatever the fuzzer invents.
"""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.core.result import Ok

from localinfra.services import RunningServices, start_services
from localinfra.stack import Endpoints

from .conftest import service_config

pytestmark = pytest.mark.connected
MAX_EXAMPLES = 60  # per operation; bounded so the suite stays fast


@pytest.fixture(scope="module")
def fuzz_services(infra: Endpoints, workdir: Path) -> Iterator[RunningServices]:
    config = service_config(infra, namespace="e2e-fuzz")
    running = start_services(config, workdir / "services-fuzz", modules=("registry", "link_api"))
    try:
        yield running
    finally:
        running.stop()


@pytest.mark.parametrize(
    ("service", "operation_count"),
    # link-api: links x2, mailboxes x2, providers x2; registry: 6 routes
    [("api_url", 6), ("registry_url", 6)],
)
def test_no_input_gets_a_server_error(
    fuzz_services: RunningServices, service: str, operation_count: int
) -> None:
    base_url = getattr(fuzz_services, service)
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    headers = {"Authorization": f"Bearer {fuzz_services.caller_token}"}
    # An operation the schema does not describe validly is an Err: the count below catches it.
    operations = [r.ok() for r in schema.get_all_operations() if isinstance(r, Ok)]
    assert len(operations) == operation_count
    for operation in operations:
        _fuzz(operation, base_url, headers)


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
