"""Fixtures that run the whole system for real: Kafka, a MongoDB-protocol server, Dovecot, and
the services as processes, exactly as `make run` starts them."""

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from localinfra import LocalOAuthServer
from localinfra.services import (
    SERVICE_MODULES,
    RunningServices,
    ServiceConfig,
    register_broker_app,
    start_services,
)
from localinfra.stack import Endpoints, LocalStack

if TYPE_CHECKING:
    from .oauth_flow import Browser

TERMINAL = ("linked", "failed")


@dataclass(frozen=True)
class MailUser:
    """A Dovecot mailbox created for one test."""

    address: str
    password: str


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="session")
def infra(local_stack: LocalStack) -> Endpoints:
    assert local_stack.endpoints is not None
    return local_stack.endpoints


def service_config(infra: Endpoints, **overrides: Any) -> ServiceConfig:
    """Returns the services' configuration for this stack, with test overrides."""
    # The local DNS server only: no test may send DNS questions to the internet.
    # The OAuth broker signs in at the local OAuth server and checks mailboxes on the OAuth
    # Dovecot (register the client with `register_broker_app` once the services run).
    settings: dict[str, Any] = {
        "kafka_bootstrap": infra.kafka_bootstrap,
        "mongodb_uri": infra.mongodb_uri,
        "ca_file": infra.ca_file,
        "dns_servers": (infra.dns_server,),
        "oauth_server_url": infra.oauth_server_url,
        "oauth_mail_host": infra.tls_hostname,
        "oauth_imaps_port": infra.oauth_imaps_port,
        "oauth_submissions_port": infra.oauth_submissions_port,
        # The relay the imap-verifier mails ownership proofs through, as `make run` sets it.
        "ownership_relay_port": infra.relay_port,
    }
    return ServiceConfig(**{**settings, **overrides})


@pytest.fixture(scope="session")
def services(infra: Endpoints, workdir: Path, local_stack: LocalStack) -> Iterator[RunningServices]:
    config = service_config(infra, namespace="e2e")
    with running_services(config, workdir / "services", local_stack.oauth_server) as running:
        yield running


@contextmanager
def running_services(
    config: ServiceConfig,
    workdir: Path,
    oauth: LocalOAuthServer,
    modules: tuple[str, ...] = SERVICE_MODULES,
) -> Iterator[RunningServices]:
    """The services (all, or `modules`) with the broker's app registered at the local
    authorization server; stopped on leaving."""
    running = start_services(config, workdir, modules)
    register_broker_app(oauth, config, running)
    try:
        yield running
    finally:
        running.stop()


def caller(base_url: str, services: RunningServices) -> httpx.AsyncClient:
    """Returns a client of one service's API, calling as the product with its token."""
    headers = {"Authorization": f"Bearer {services.caller_token}"}
    return httpx.AsyncClient(base_url=base_url, headers=headers, timeout=10)


def operator(base_url: str, services: RunningServices) -> httpx.AsyncClient:
    """Returns a client of the registry as an operator calls it: plans, force-unlink and the
    user routes (the product's caller key reaches none of them, docs/adr/0017)."""
    headers = {"Authorization": f"Bearer {services.operator_token}"}
    return httpx.AsyncClient(base_url=base_url, headers=headers, timeout=10)


@pytest.fixture
async def api(services: RunningServices) -> AsyncIterator[httpx.AsyncClient]:
    async with caller(services.api_url, services) as client:
        yield client


@pytest.fixture
async def registry_api(services: RunningServices) -> AsyncIterator[httpx.AsyncClient]:
    async with operator(services.registry_url, services) as client:
        yield client


@pytest.fixture
async def sign_in_api(services: RunningServices) -> AsyncIterator[httpx.AsyncClient]:
    """The registry as the product's sign-in service calls it: the owner lookup's one caller."""
    headers = {"Authorization": f"Bearer {services.sign_in_token}"}
    async with httpx.AsyncClient(base_url=services.registry_url, headers=headers) as client:
        yield client


@pytest.fixture
def new_mail_user(local_stack: LocalStack) -> Any:
    """Returns a factory of fresh Dovecot users with random passwords."""

    def create(prefix: str = "user") -> MailUser:
        user = MailUser(f"{prefix}-{secrets.token_hex(4)}@example.org", secrets.token_urlsafe(18))
        local_stack.add_mail_user(user.address, user.password)
        return user

    return create


def unique_user_id() -> str:
    return f"u-{secrets.token_hex(4)}"


def imap_body(
    infra: Endpoints,
    user: MailUser,
    *,
    imap_port: int | None = None,
    imap_security: str = "ssl",
    smtp_port: int | None = None,
    smtp_security: str = "ssl",
    smtp_password: str | None = None,
    host: str | None = None,
) -> dict[str, Any]:
    """Returns a POST body linking a Dovecot user, by default over IMAPS and SMTPS."""
    host = host or infra.tls_hostname
    smtp: dict[str, Any] = {
        "host": host,
        "port": smtp_port or infra.submissions_port,
        "security": smtp_security,
    }
    if smtp_password is not None:
        smtp["password"] = smtp_password
    return {
        "email": user.address,
        "terms_accepted": True,
        "imap": {
            "host": host,
            "port": imap_port or infra.imaps_port,
            "security": imap_security,
            "password": user.password,
        },
        "smtp": smtp,
    }


def links_path(account_id: str, user_id: str) -> str:
    return f"/v1/accounts/{account_id}/users/{user_id}/links"


async def request_link(
    api: httpx.AsyncClient, account_id: str, user_id: str, body: dict[str, Any], **headers: str
) -> dict[str, Any]:
    response = await api.post(links_path(account_id, user_id), json=body, headers=headers)
    assert response.status_code == 202, response.text
    result: dict[str, Any] = response.json()
    return result


async def wait_for_outcome(
    api: httpx.AsyncClient, status_url: str, seconds: float = 30
) -> dict[str, Any]:
    """Polls a link's status until it is linked or failed."""
    deadline = time.monotonic() + seconds
    while True:
        response = await api.get(status_url)
        assert response.status_code == 200, response.text
        link: dict[str, Any] = response.json()
        if link["status"] in TERMINAL:
            return link
        if time.monotonic() > deadline:
            raise AssertionError(f"link still {link['status']} after {seconds} s: {link}")
        await asyncio.sleep(0.02)


async def link_and_wait(
    api: httpx.AsyncClient, account_id: str, user_id: str, body: dict[str, Any]
) -> dict[str, Any]:
    accepted = await request_link(api, account_id, user_id, body)
    return await wait_for_outcome(api, accepted["status_url"])


@pytest.fixture
def oauth(local_stack: LocalStack) -> LocalOAuthServer:
    """The local authorization server playing Google, Microsoft, Yahoo and AOL."""
    return local_stack.oauth_server


@pytest.fixture
async def browser(infra: Endpoints) -> AsyncIterator["Browser"]:
    """A person's browser (its own cookie jar) trusting the stack's CA."""
    from .oauth_flow import Browser  # oauth_flow imports this module's helpers

    async with Browser(infra.ca_file) as opened:
        yield opened
