"""Link-api SIGKILLed inside each crash window of a link request, then restarted: the request
still ends with exactly one final status, a retry with its Idempotency-Key gets the same link,
and a request that could not be sent in time fails `request_not_sent` and frees the mailbox
for a fresh link (issue 13, point 6; services/link-api/DESIGN.md, "Sending a request").

The windows are entered deterministically: link-api runs with MBL_TEST_PAUSE_FILE (test only);
a request reaching the window the file names writes `<file>.reached` and waits, and the test
kills link-api then. Each kill and restart is a new process: a few of them take minutes on a
busy machine, hence the timeouts."""

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from localinfra.services import RunningServices, start_services
from localinfra.stack import Endpoints

from .conftest import caller, imap_body, links_path, service_config, unique_user_id
from .conftest import wait_for_outcome as wait_until_ended
from .probes import events_about

NAMESPACE = "e2e-crash"
LINK_API = "link_api"
WINDOWS = ("stored", "decided", "published")
# The relay looks every second at requests unsent for a second; a request stays sendable for
# 60 s (the default), far more than a restart takes, unless a test says otherwise.
RELAY = {"MBL_OUTBOX_RELAY_INTERVAL_SECONDS": "1", "MBL_OUTBOX_RELAY_GRACE_SECONDS": "1"}
FINAL_EVENTS = {"MailboxLinked", "LinkRejected"}


@pytest.fixture(scope="module")
def pause_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("crash") / "pause"


@pytest.fixture(scope="module")
async def crash_services(
    infra: Endpoints, workdir: Path, pause_file: Path
) -> AsyncIterator[RunningServices]:
    env = {**RELAY, "MBL_TEST_PAUSE_FILE": str(pause_file)}
    config = service_config(infra, namespace=NAMESPACE, extra_env=env)
    running = await asyncio.to_thread(start_services, config, workdir / "services-crash")
    try:
        yield running
    finally:
        await asyncio.to_thread(running.stop)


async def _restart_link_api(services: RunningServices, **env: str | None) -> None:
    await asyncio.to_thread(services.kill, LINK_API)
    await asyncio.to_thread(services.restart, LINK_API, env)


async def _request_killed_in(
    services: RunningServices,
    window: str,
    body: dict[str, Any],
    user_id: str,
    key: str,
    pause_file: Path,
) -> float:
    """Sends the request to link-api, which pauses in the window, kills link-api there, and
    returns when (time.time()) the request reached the window."""
    reached = pause_file.with_name(pause_file.name + ".reached")
    reached.unlink(missing_ok=True)
    pause_file.write_text(window)
    try:
        async with caller(services.api_url, services) as api:
            post = asyncio.create_task(
                api.post(links_path("acme", user_id), json=body, headers={"Idempotency-Key": key})
            )
            deadline = time.monotonic() + 60
            while not reached.exists():
                assert not post.done(), f"answered before the window: {post.result().text}"
                assert time.monotonic() < deadline, f"never reached the {window} window"
                await asyncio.sleep(0.01)
            at = time.time()
            await asyncio.to_thread(services.kill, LINK_API)
            with pytest.raises(httpx.TransportError):
                await post  # the caller never got an answer
    finally:
        pause_file.unlink(missing_ok=True)  # the restarted link-api pauses nowhere
    return at


async def _final_events(infra: Endpoints, address: str) -> dict[str, list[str]]:
    """Per link id, the types of its events on the topics (LinkRequested and the answers)."""
    found: dict[str, list[str]] = {}
    for _, value in await events_about(infra.kafka_bootstrap, NAMESPACE, address):
        event = json.loads(value)
        found.setdefault(event["data"]["link_id"], []).append(event["type"])
        if event["type"] == "LinkRequested":
            found[event["data"]["link_id"]].append(f"id:{event['event_id']}")
    return found


@pytest.mark.timeout(600)
@pytest.mark.parametrize("window", WINDOWS)
async def test_a_request_killed_in_each_window_ends_once_and_its_key_gives_the_same_link(
    crash_services: RunningServices,
    infra: Endpoints,
    new_mail_user: Any,
    pause_file: Path,
    window: str,
) -> None:
    user, user_id, key = new_mail_user(f"crash-{window}"), unique_user_id(), f"key-{window}"
    body = imap_body(infra, user)
    await _request_killed_in(crash_services, window, body, user_id, key, pause_file)
    await asyncio.to_thread(crash_services.restart, LINK_API)
    async with caller(crash_services.api_url, crash_services) as api:
        retried = await api.post(links_path("acme", user_id), json=body,
                                 headers={"Idempotency-Key": key})  # fmt: skip
        assert retried.status_code == 202, retried.text
        assert retried.headers["Idempotent-Replayed"] == "true"
        link_id = retried.json()["link_id"]
        link = await wait_until_ended(api, retried.json()["status_url"], seconds=60)
        assert link["status"] == "linked", link
        again = await api.post(links_path("acme", user_id), json=body,
                               headers={"Idempotency-Key": key})  # fmt: skip
        assert again.json()["link_id"] == link_id
        mailboxes = (await api.get(f"/v1/accounts/acme/users/{user_id}/mailboxes")).json()
        assert [m["email"] for m in mailboxes["mailboxes"]] == [user.address]
    events = await _final_events(infra, user.address)
    assert list(events) == [link_id], events  # one link for the request, nothing else
    types = events[link_id]
    assert sum(t in FINAL_EVENTS for t in types) == 1, types  # exactly one final answer
    assert len({t for t in types if t.startswith("id:")}) == 1, types  # resent as the same event


@pytest.mark.timeout(600)
async def test_a_request_not_sent_in_time_fails_and_a_new_key_gets_a_fresh_link(
    crash_services: RunningServices, infra: Endpoints, new_mail_user: Any, pause_file: Path
) -> None:
    user, user_id = new_mail_user("crash-late"), unique_user_id()
    body = imap_body(infra, user)
    reached = await _request_killed_in(
        crash_services, "stored", body, user_id, "key-late-1", pause_file
    )
    # Down for longer than the send deadline (2 s here): the relay must not send it late.
    await asyncio.sleep(max(0.0, reached + 3 - time.time()))
    await asyncio.to_thread(crash_services.restart, LINK_API, {"MBL_SEND_DEADLINE_SECONDS": "2"})
    async with caller(crash_services.api_url, crash_services) as api:
        same_key = await api.post(links_path("acme", user_id), json=body,
                                  headers={"Idempotency-Key": "key-late-1"})  # fmt: skip
        assert same_key.status_code == 202, same_key.text
        dead_id = same_key.json()["link_id"]
        dead = await wait_until_ended(api, same_key.json()["status_url"], seconds=30)
        assert (dead["status"], dead["failure"]["code"]) == ("failed", "request_not_sent"), dead
        fresh = await api.post(links_path("acme", user_id), json=body,
                               headers={"Idempotency-Key": "key-late-2"})  # fmt: skip
        assert fresh.status_code == 202, fresh.text
        assert fresh.headers["Idempotent-Replayed"] == "false"
        assert fresh.json()["link_id"] != dead_id
        linked = await wait_until_ended(api, fresh.json()["status_url"], seconds=60)
        assert linked["status"] == "linked", linked
    events = await _final_events(infra, user.address)
    assert dead_id not in events, events  # never sent, so nothing else ever answers it
    assert sum(t in FINAL_EVENTS for t in events[linked["link_id"]]) == 1
    await _restart_link_api(crash_services, MBL_SEND_DEADLINE_SECONDS=None)
