"""Links to silent servers hold one consumer slot each, never the links queued behind them:
normal links finish in their normal time while the silent ones wait out their deadline, and
the silent ones fail with `timeout` by the documented deadline."""

import asyncio
import secrets
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from localinfra.services import RunningServices, start_services
from localinfra.stack import Endpoints

from .conftest import (
    MailUser,
    caller,
    imap_body,
    request_link,
    service_config,
    unique_user_id,
    wait_for_outcome,
)

# Short enough to keep the test short, long enough that a normal link (1-3 s here, 5-6 s on a
# loaded 2-core machine) ends well before it: a link that ends before the silent checks could
# have ended cannot have waited for them.
CHECK_DEADLINE = 10.0
SILENT_LINKS = 4  # fewer than the consumers' slots (MBL_CONSUMER_CONCURRENCY, 8)
NORMAL_LINKS = 4
# From POST to the silent link's failure, beside the check itself: the request, reservation
# and failure events through Kafka and the registry, on a busy 2-core machine.
MARGIN = 6.0


@pytest.fixture
async def short_deadline_api(infra: Endpoints, workdir: Path) -> AsyncIterator[httpx.AsyncClient]:
    config = service_config(
        infra,
        namespace="e2e-hol",
        extra_env={
            "MBL_VERIFIER_TIMEOUT_SECONDS": str(CHECK_DEADLINE),
            "MBL_CONSUMER_CONCURRENCY": "8",
        },
    )
    running: RunningServices = await asyncio.to_thread(
        start_services, config, workdir / "services-hol"
    )
    try:
        async with caller(running.api_url, running) as client:
            yield client
    finally:
        await asyncio.to_thread(running.stop)


@pytest.fixture
async def silent_port() -> AsyncIterator[int]:
    """A loopback server that accepts connections and never says a word."""

    async def keep_quiet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client gives up
        writer.close()

    server = await asyncio.start_server(keep_quiet, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1]


async def _link(api: httpx.AsyncClient, body: dict[str, Any]) -> tuple[dict[str, Any], float]:
    """Requests a link and waits for its end; returns it and the seconds from POST to end."""
    started = time.monotonic()
    accepted = await request_link(api, "acme", unique_user_id(), body)
    link = await wait_for_outcome(api, accepted["status_url"], seconds=CHECK_DEADLINE * 4)
    return link, time.monotonic() - started


def _silent_body(infra: Endpoints, port: int) -> dict[str, Any]:
    user = MailUser(f"silent-{secrets.token_hex(4)}@example.org", secrets.token_urlsafe(12))
    return imap_body(infra, user, imap_port=port, smtp_port=port, host="127.0.0.1")


# Its own services start inside the test's time (and the stack, when it runs alone).
@pytest.mark.timeout(300)
async def test_links_to_silent_servers_never_delay_the_links_queued_behind_them(
    short_deadline_api: httpx.AsyncClient,
    infra: Endpoints,
    new_mail_user: Any,
    silent_port: int,
) -> None:
    api = short_deadline_api
    # Alone first: each mailbox is logged in to once before (Dovecot creates it on first login).
    alone_users = [new_mail_user("alone") for _ in range(NORMAL_LINKS)]
    alone = await asyncio.gather(*(_link(api, imap_body(infra, u)) for u in alone_users))
    assert all(link["status"] == "linked" for link, _ in alone), alone

    silent_requested = time.monotonic()
    silent = [
        asyncio.create_task(_link(api, _silent_body(infra, silent_port)))
        for _ in range(SILENT_LINKS)
    ]
    await asyncio.sleep(0.3)  # the silent ones are requested (and reach the verifier) first
    queued_users = [new_mail_user("queued") for _ in range(NORMAL_LINKS)]
    queued_start = time.monotonic()
    queued = await asyncio.gather(*(_link(api, imap_body(infra, u)) for u in queued_users))
    queued_done = time.monotonic() - queued_start
    silent_ends = await asyncio.gather(*silent)

    alone_median = statistics.median(took for _, took in alone)
    queued_median = statistics.median(took for _, took in queued)
    silent_median = statistics.median(took for _, took in silent_ends)
    print(
        f"\nhead of line: normal link median {alone_median:.2f} s alone, {queued_median:.2f} s "
        f"behind {SILENT_LINKS} silent links (all {NORMAL_LINKS} done in {queued_done:.2f} s); "
        f"silent links ended after median {silent_median:.2f} s "
        f"(deadline {CHECK_DEADLINE:g} s)"
    )
    assert all(link["status"] == "linked" for link, _ in queued), queued
    for link, took in silent_ends:
        assert link["status"] == "failed", link
        assert link["failure"]["code"] == "timeout", link
        assert took < CHECK_DEADLINE + MARGIN, (took, link)
    # The queued links ended while every silent check was still waiting for its deadline
    # (with batches, they ended only after the silent ones' batch: the test then fails).
    assert queued_start + queued_done < silent_requested + CHECK_DEADLINE, (queued_done, queued)
