"""Kafka, then the MongoDB-protocol server, go away and come back under running services
(issue 16): /readyz turns 503 on every service that needs them while /livez stays 200, a link
request is refused 503 with Retry-After within the publish deadline and leaves nothing pending,
link-api started during the outage answers reads, and once they return every service turns
ready by itself and new links link.

The outages run on a private LocalStack: stopping the session's Kafka would fail every other
test running beside these.
"""

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from pymongo import AsyncMongoClient

from localinfra.services import RunningServices
from localinfra.stack import LocalStack

from .conftest import (
    MailUser,
    caller,
    imap_body,
    link_and_wait,
    links_path,
    running_services,
    service_config,
    unique_user_id,
)

# A private stack and four services start in the first test's time; then two outages.
pytestmark = [pytest.mark.connected, pytest.mark.timeout(900)]

PUBLISH_DEADLINE_SECONDS = 3
# Generous, for a busy 2-core machine: the checks time out in 1.5 s and the start-up retries
# every 5 s at most; Kafka's group coordinator needs a few seconds to take members back.
TURN_SECONDS = 120.0
ACCOUNT = "acme"


@dataclass
class Outage:
    """A private stack and the services on it."""

    stack: LocalStack
    services: RunningServices
    user: MailUser
    mongodb_uri: str

    def health_urls(self) -> dict[str, str]:
        verifier = next(p for p in self.services.processes if p.name == "imap_verifier")
        assert verifier.env is not None
        return {
            "link_api": self.services.api_url,
            "registry": self.services.registry_url,
            "oauth_broker": self.services.broker_url,
            "imap_verifier": f"http://127.0.0.1:{verifier.env['MBL_HTTP_PORT']}",
        }


@pytest.fixture(scope="module")
def outage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outage]:
    stack = LocalStack(kafka_heap_mb=384)
    user = MailUser(f"outage-{uuid.uuid4().hex[:8]}@example.org", uuid.uuid4().hex)
    stack.add_mail_user(user.address, user.password)
    workdir = tmp_path_factory.mktemp("outage")
    try:
        # Its own temp dir (PostgreSQL's user must reach it; pytest's tmp dirs are 0700).
        endpoints = stack.start()
    except Exception as exc:
        stack.stop()
        pytest.fail(f"the private stack for the outage tests did not start: {exc}")
    config = service_config(
        endpoints,
        namespace=f"outage-{uuid.uuid4().hex[:6]}",
        extra_env={"MBL_PUBLISH_DEADLINE_SECONDS": str(PUBLISH_DEADLINE_SECONDS)},
    )
    try:
        with running_services(config, workdir / "services", stack.oauth_server) as services:
            yield Outage(stack, services, user, endpoints.mongodb_uri)
    finally:
        stack.stop()


@pytest.fixture
async def api(outage: Outage) -> AsyncIterator[httpx.AsyncClient]:
    async with caller(outage.services.api_url, outage.services) as client:
        yield client


async def _status(url: str) -> int:
    async with httpx.AsyncClient(timeout=10) as client:
        try:
            return (await client.get(url)).status_code
        except httpx.TransportError:
            return 0


async def _wait_all(urls: dict[str, str], path: str, wanted: int) -> float:
    """Polls `path` on every service until each answers `wanted`; returns the seconds taken."""
    began = time.monotonic()
    pending = dict(urls)
    while pending:
        for name, base in list(pending.items()):
            if await _status(base + path) == wanted:
                del pending[name]
        if not pending:
            break
        if time.monotonic() - began > TURN_SECONDS:
            raise AssertionError(f"{path} not {wanted} after {TURN_SECONDS} s on {sorted(pending)}")
        await asyncio.sleep(0.2)
    return time.monotonic() - began


async def _failing(url: str) -> list[str]:
    async with httpx.AsyncClient(timeout=10) as client:
        body: dict[str, Any] = (await client.get(url + "/readyz")).json()
    failing: list[str] = body["failing"]
    return failing


async def _link_fresh(api: httpx.AsyncClient, outage: Outage) -> dict[str, Any]:
    # A new mailbox each time: one already linked would fail, rightly, as linked elsewhere.
    user = MailUser(f"outage-{uuid.uuid4().hex[:8]}@example.org", uuid.uuid4().hex)
    outage.stack.add_mail_user(user.address, user.password)
    body = imap_body(outage.stack.endpoints, user)
    link = await link_and_wait(api, ACCOUNT, unique_user_id(), body)
    assert link["status"] == "linked", link.get("failure")
    return link


async def _links_of(outage: Outage, namespace_db: str, user_id: str) -> int:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(outage.mongodb_uri)
    try:
        database = client[namespace_db]
        total = 0
        for name in await database.list_collection_names():
            total += await database[name].count_documents({"$or": [
                {"owner.user_id": user_id}, {"user_id": user_id},
            ]})  # fmt: skip
        return total
    finally:
        await client.close()


async def test_kafka_outage(outage: Outage, api: httpx.AsyncClient) -> None:
    urls = outage.health_urls()
    before = await _link_fresh(api, outage)

    outage.stack.stop_kafka()
    took = await _wait_all(urls, "/readyz", 503)
    print(f"\nKafka stopped: every /readyz 503 after {took:.1f} s")
    for base in urls.values():
        assert await _status(base + "/livez") == 200
        assert await _status(base + "/healthz") == 200
        assert "kafka" in await _failing(base)

    # A link request: refused within the bound, with Retry-After, nothing stored for it.
    user_id = unique_user_id()
    began = time.monotonic()
    refused = await api.post(
        links_path(ACCOUNT, user_id), json=imap_body(outage.stack.endpoints, outage.user)
    )
    answered_in = time.monotonic() - began
    print(f"POST during the Kafka outage: {refused.status_code} in {answered_in:.2f} s")
    assert refused.status_code == 503, refused.text
    assert refused.headers["Retry-After"].isdigit()
    assert refused.json()["error"] == "temporarily_unavailable"
    # The bound: the check (1.5 s) plus the publish deadline; a busy machine gets slack.
    assert answered_in < 1.5 + PUBLISH_DEADLINE_SECONDS + 10
    namespace = next(p for p in outage.services.processes if p.name == "link_api").env or {}
    link_db = f"{namespace['MBL_NAMESPACE']}-link-api"
    assert await _links_of(outage, link_db, user_id) == 0

    # link-api started during the outage: it runs, is not ready, and answers reads.
    outage.services.kill("link_api")
    outage.services.restart("link_api", wait_for="/livez")
    assert await _status(urls["link_api"] + "/readyz") == 503
    read = await api.get(before["status_url"])
    assert read.status_code == 200, read.text
    assert read.json()["status"] == "linked"

    began = time.monotonic()
    outage.stack.start_kafka()
    restarted_in = time.monotonic() - began
    ready_in = await _wait_all(urls, "/readyz", 200)
    print(
        f"Kafka back (restart took {restarted_in:.1f} s): every /readyz 200 {ready_in:.1f} s later"
    )
    await _link_fresh(api, outage)


async def test_mongodb_outage(outage: Outage, api: httpx.AsyncClient) -> None:
    urls = outage.health_urls()
    await _wait_all(urls, "/readyz", 200)  # the Kafka test's end, or a fresh start

    outage.stack.stop_mongo()
    took = await _wait_all(urls, "/readyz", 503)
    print(f"\nMongoDB protocol server stopped: every /readyz 503 after {took:.1f} s")
    for base in urls.values():
        assert await _status(base + "/livez") == 200
        assert "mongodb" in await _failing(base)

    began = time.monotonic()
    outage.stack.start_mongo()
    restarted_in = time.monotonic() - began
    ready_in = await _wait_all(urls, "/readyz", 200)
    print(
        f"MongoDB back (restart took {restarted_in:.1f} s): "
        f"every /readyz 200 {ready_in:.1f} s later"
    )
    await _link_fresh(api, outage)
