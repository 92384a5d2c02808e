"""A link request cut short anywhere (a crash at each window, Kafka refusing) still ends with one
link per request and one final status: the relay or a retry carries it on (DESIGN.md, "Sending
a request"). The store is the in-memory fake; test_link_store.py checks the Mongo one."""

from dataclasses import replace
from datetime import timedelta

import pytest
from pydantic import SecretStr

from link_api import handlers
from link_api.adapters.link_store import IdempotencyRecord
from link_api.domain.link_request import LinkRequest
from link_api.domain.link_status import LinkStatus, LinkView
from link_api.handlers import FAULT_POINTS, LinkApiDeps, RequestedLink
from link_api_fakes import InMemoryLinkStore
from mailbox_link_contract.events import (
    Envelope,
    LinkRequested,
    MailboxOwner,
    ProviderType,
    ServerSettings,
    utc_now,
)
from mailbox_link_contract.failures import FailureCode
from mailbox_link_shared.credentials import MailboxCredentials
from mailbox_link_shared.crypto import SecretBox, generate_key
from mailbox_link_shared.publishing import RecordingPublisher

OWNER = MailboxOwner(account_id="acme", user_id="u1")
# No grace (and a second past): whatever is listed is looked at, even this millisecond's.
NOW = timedelta(seconds=-1)


class Crash(BaseException):
    """The process dies here (BaseException: nothing on the way catches it)."""


class FlakyPublisher(RecordingPublisher):
    """Records events, or refuses them while `down`."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    async def publish(self, event: Envelope) -> None:
        if self.down:
            raise ConnectionError("kafka is down")
        await super().publish(event)


def _crash_at(point: str) -> handlers.FaultPoint:
    async def fault_point(reached: str) -> None:
        if reached == point:
            raise Crash(point)

    return fault_point


@pytest.fixture
def deps() -> LinkApiDeps:
    box = SecretBox({"k1": SecretStr(generate_key())}, "k1")
    return LinkApiDeps(InMemoryLinkStore(), FlakyPublisher(), box, timedelta(minutes=15))


def _request(password: str = "pw-1") -> LinkRequest:  # noqa: S107 - a test value
    server = ServerSettings(host="imap.example.org", port=993, security="ssl", username="a@x.org")
    credentials = MailboxCredentials(password, password)
    return LinkRequest(OWNER, "a@x.org", ProviderType.IMAP, server, server, credentials)


def _sent(deps: LinkApiDeps, link_id: str | None = None) -> list[LinkRequested]:
    assert isinstance(deps.publisher, RecordingPublisher)
    return [
        e
        for e in deps.publisher.events
        if isinstance(e, LinkRequested) and link_id in (None, e.data.link_id)
    ]


def _store(deps: LinkApiDeps) -> InMemoryLinkStore:
    assert isinstance(deps.store, InMemoryLinkStore)
    return deps.store


async def _crashed_request(deps: LinkApiDeps, point: str, key: str | None = "key-1") -> str:
    with pytest.raises(Crash):
        await handlers.request_link(_request(), key, replace(deps, fault_point=_crash_at(point)))
    [link_id] = _store(deps).links
    return link_id


@pytest.mark.parametrize("point", FAULT_POINTS)
async def test_the_relay_sends_a_request_cut_short_at_any_window_once_with_one_event_id(
    deps: LinkApiDeps, point: str
) -> None:
    link_id = await _crashed_request(deps, point)
    await handlers.relay_unsent(deps, NOW, 100)
    sent = _sent(deps, link_id)
    assert sent, "the relay sent nothing"
    assert len({event.event_id for event in sent}) == 1  # a repeat is the same event
    assert not _store(deps).unsent_since
    assert await handlers.relay_unsent(deps, NOW, 100) == 0


@pytest.mark.parametrize("point", FAULT_POINTS)
async def test_a_retry_with_the_same_key_after_a_crash_gets_the_same_link_sent(
    deps: LinkApiDeps, point: str
) -> None:
    link_id = await _crashed_request(deps, point)
    again = await handlers.request_link(_request(), "key-1", deps)
    assert (again.link.link_id, again.created) == (link_id, False)
    await handlers.relay_unsent(deps, NOW, 100)  # what a retry did not send, the relay does
    assert len({event.event_id for event in _sent(deps, link_id)}) == 1
    assert len(_store(deps).links) == 1


async def test_a_retry_whose_key_was_bound_before_the_link_was_stored_carries_it_on(
    deps: LinkApiDeps,
) -> None:
    # The first request bound the key to its link id, then died before storing the link.
    first = IdempotencyRecord("first-link", _request().fingerprint())
    scope = handlers._idempotency_scope(OWNER, "key-1")
    await deps.store.remember_idempotency_key(scope, first)
    again = await handlers.request_link(_request(), "key-1", deps)
    assert (again.link.link_id, again.created) == ("first-link", False)
    assert [e.data.link_id for e in _sent(deps)] == ["first-link"]


async def test_a_request_not_sent_by_the_deadline_fails_and_a_new_key_gets_a_fresh_link(
    deps: LinkApiDeps,
) -> None:
    deps = replace(deps, send_deadline=timedelta(0))  # everything undecided is too old
    dead = await _crashed_request(deps, "stored")
    await handlers.relay_unsent(deps, NOW, 100)
    link = await handlers.get_link(OWNER, dead, deps)
    assert link is not None
    assert link.status is LinkStatus.FAILED
    assert link.failure is not None
    assert link.failure.code is FailureCode.REQUEST_NOT_SENT
    assert not _sent(deps)
    fresh = await handlers.request_link(_request(), "key-2", deps)
    assert fresh.created
    assert fresh.link.link_id != dead
    assert [e.data.link_id for e in _sent(deps)] == [fresh.link.link_id]
    # The first key still names its own link, ended.
    replayed = await handlers.request_link(_request(), "key-1", deps)
    assert (replayed.link.link_id, replayed.link.status) == (dead, LinkStatus.FAILED)


@pytest.mark.parametrize("key", [None, "key-2"])
async def test_a_retry_never_waits_on_a_link_that_cannot_finish(
    deps: LinkApiDeps, key: str | None
) -> None:
    # Too old to send, and no relay has come by: the retry itself fails it and starts afresh.
    deps = replace(deps, send_deadline=timedelta(0))
    dead = await _crashed_request(deps, "stored")
    fresh = await handlers.request_link(_request("pw-2"), key, deps)
    assert fresh.created
    assert fresh.link.link_id != dead
    dead_link = await handlers.get_link(OWNER, dead, deps)
    assert dead_link is not None
    assert dead_link.status is LinkStatus.FAILED
    assert [e.data.link_id for e in _sent(deps)] == [fresh.link.link_id]


async def test_a_retry_with_a_new_key_finds_a_young_stranded_link_sent_and_answered(
    deps: LinkApiDeps,
) -> None:
    stranded = await _crashed_request(deps, "stored")
    again = await handlers.request_link(_request(), "key-2", deps)
    assert (again.link.link_id, again.created) == (stranded, False)
    assert [e.data.link_id for e in _sent(deps)] == [stranded]  # it can finish: it was sent
    # The new key is led to that link too, and nothing else is ever sent for it.
    replay = await handlers.request_link(_request(), "key-2", deps)
    assert replay.link.link_id == stranded
    await handlers.relay_unsent(deps, NOW, 100)
    assert {e.data.link_id for e in _sent(deps)} == {stranded}


async def test_a_request_kafka_refused_is_answered_and_sent_by_the_relay_later(
    deps: LinkApiDeps,
) -> None:
    assert isinstance(deps.publisher, FlakyPublisher)
    deps.publisher.down = True
    result: RequestedLink = await handlers.request_link(_request(), "key-1", deps)
    assert result.created
    assert result.link.status is LinkStatus.PENDING
    await handlers.relay_unsent(deps, NOW, 100)  # still down: kept for the next round
    assert _store(deps).unsent_since
    deps.publisher.down = False
    await handlers.relay_unsent(deps, NOW, 100)
    assert [e.data.link_id for e in _sent(deps)] == [result.link.link_id]
    assert not _store(deps).unsent_since


async def test_the_relay_waits_out_its_grace_and_drops_an_entry_whose_link_never_came(
    deps: LinkApiDeps,
) -> None:
    _store(deps).unsent_since["never-stored"] = utc_now()
    assert await handlers.relay_unsent(deps, timedelta(minutes=1), 100) == 0
    await handlers.relay_unsent(deps, NOW, 100)
    assert "never-stored" in _store(deps).unsent_since  # its request may still store it
    await handlers.relay_unsent(replace(deps, send_deadline=timedelta(0)), NOW, 100)
    assert not _store(deps).unsent_since


async def test_a_duplicate_with_its_own_key_is_led_to_the_link_under_way(
    deps: LinkApiDeps,
) -> None:
    first = await handlers.request_link(_request(), None, deps)
    second = await handlers.request_link(_request(), "key-9", deps)
    assert (second.link.link_id, second.created) == (first.link.link_id, False)
    replay = await handlers.request_link(_request(), "key-9", deps)
    assert replay.link.link_id == first.link.link_id
    assert len(_store(deps).links) == 1
    assert not _store(deps).unsent_since
    assert [e.data.link_id for e in _sent(deps)] == [first.link.link_id]


async def test_a_request_whose_link_a_retry_stored_first_sends_the_stored_event(
    deps: LinkApiDeps,
) -> None:
    # A retry with the key stored link L (its own copy of the event) before the first request.
    first = handlers._link_requested("L", _request(), deps.secret_box)
    now = utc_now()
    view = LinkView("L", OWNER, "a@x.org", ProviderType.IMAP, LinkStatus.PENDING, now, now)
    await deps.store.insert_link(view, first.model_dump_json())
    await handlers._start("L", _request(), deps, created=True)
    await handlers.relay_unsent(deps, NOW, 100)
    assert {event.event_id for event in _sent(deps, "L")} == {first.event_id}
