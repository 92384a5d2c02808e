"""link-api's handler table against the catalogue, and every example of the contract replayed
through it: each is handled, knowingly ignored, or (not on link-api's topics) skipped."""

from datetime import timedelta

from pydantic import SecretStr

from link_api.config import SERVICE_NAME
from link_api.handlers import EVENT_HANDLERS, LinkApiDeps
from link_api_fakes import InMemoryLinkStore
from mailbox_link_shared.crypto import SecretBox, generate_key
from mailbox_link_shared.publishing import RecordingPublisher
from mailbox_link_shared.routing import EventRouter, replay_problems, table_gaps


def _deps() -> LinkApiDeps:
    box = SecretBox({"k1": SecretStr(generate_key())}, "k1")
    return LinkApiDeps(InMemoryLinkStore(), RecordingPublisher(), box, timedelta(minutes=15))


def test_the_table_lists_every_event_type_of_its_topics_and_no_other() -> None:
    assert table_gaps(SERVICE_NAME, EVENT_HANDLERS) == []


async def test_every_example_is_handled_ignored_or_skipped() -> None:
    assert await replay_problems(SERVICE_NAME, EventRouter(EVENT_HANDLERS, _deps())) == []
