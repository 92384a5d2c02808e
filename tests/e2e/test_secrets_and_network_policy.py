"""Raw passwords never reach Kafka, MongoDB or a log; user-typed hosts cannot reach our network."""

import asyncio
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from localinfra.services import RunningServices, start_services
from localinfra.stack import Endpoints, LocalStack

from .conftest import MailUser, imap_body, link_and_wait, service_config, unique_user_id
from .probes import dump_databases, read_topics


async def test_raw_passwords_appear_in_no_topic_document_or_log(
    api: httpx.AsyncClient,
    infra: Endpoints,
    services: RunningServices,
    local_stack: LocalStack,
    workdir: Path,
) -> None:
    user = MailUser(
        f"secret-{secrets.token_hex(4)}@example.org", "RawSecret-" + secrets.token_hex(8)
    )
    local_stack.add_mail_user(user.address, user.password)
    wrong = "WrongSecret-" + secrets.token_hex(8)
    # The failure first: once linked, another account's request is refused before any login.
    failed_body = imap_body(infra, user, smtp_password=wrong)
    failed = await link_and_wait(api, "globex", unique_user_id(), failed_body)
    assert failed["failure"]["code"] == "smtp_auth_failed"
    linked = await link_and_wait(api, "acme", unique_user_id(), imap_body(infra, user))
    assert linked["status"] == "linked"

    records = await read_topics(infra.kafka_bootstrap, "e2e")
    documents = await dump_databases(infra.mongodb_uri, "e2e")
    log_files = [*workdir.rglob("*.log"), *Path(infra.workdir).rglob("*.log")]
    logs = [p.read_bytes() for p in log_files]
    assert records
    assert documents
    assert logs
    for raw in (user.password.encode(), wrong.encode()):
        assert not [r for r in records if raw in r[1] or raw in r[2]], "password in Kafka"
        assert not [d for d in documents if raw in d], "password in MongoDB"
        assert not [log for log in logs if raw in log], "password in a log"


class ConnectionCounter:
    """A TCP listener on loopback that only counts who connects."""

    def __init__(self) -> None:
        self.connections = 0
        self.port = 0

    async def __aenter__(self) -> "ConnectionCounter":
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        self._server.close()
        await self._server.wait_closed()

    async def _accept(self, _: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.close()


@pytest.fixture
async def services_without_allowlist(
    infra: Endpoints, workdir: Path
) -> AsyncIterator[RunningServices]:
    config = service_config(infra, namespace="e2e-ssrf", allowed_networks=())
    running = await asyncio.to_thread(start_services, config, workdir / "services-ssrf")
    try:
        yield running
    finally:
        await asyncio.to_thread(running.stop)


async def test_loopback_host_is_refused_without_connecting_when_not_allowlisted(
    services_without_allowlist: RunningServices, infra: Endpoints
) -> None:
    user = MailUser("ssrf@example.org", "irrelevant-password")
    headers = {"Authorization": f"Bearer {services_without_allowlist.caller_token}"}
    async with (
        ConnectionCounter() as listener,
        httpx.AsyncClient(base_url=services_without_allowlist.api_url, headers=headers) as api,
    ):
        body: dict[str, Any] = imap_body(infra, user, host="127.0.0.1")
        body["imap"]["port"] = body["smtp"]["port"] = listener.port
        link = await link_and_wait(api, "acme", unique_user_id(), body)
        assert link["status"] == "failed"
        assert link["failure"]["code"] == "host_not_allowed"
        assert listener.connections == 0
