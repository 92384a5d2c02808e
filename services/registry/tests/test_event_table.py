"""registry's handler table against the catalogue, and every example of the contract replayed
through it: each is handled, knowingly ignored, or (not on registry's topics) skipped."""

from mailbox_link_shared.publishing import RecordingPublisher
from mailbox_link_shared.routing import EventRouter, replay_problems, table_gaps
from registry.config import SERVICE_NAME
from registry.domain.plans import DEFAULT_PLANS, PlanTable
from registry.handlers import EVENT_HANDLERS, RegistryDeps
from registry_fakes import FakeClock, InMemoryRegistryStore


def _deps() -> RegistryDeps:
    clock = FakeClock()
    plans = PlanTable(DEFAULT_PLANS, "basic")
    return RegistryDeps(InMemoryRegistryStore(clock), RecordingPublisher(), plans, clock=clock)


def test_the_table_lists_every_event_type_of_its_topics_and_no_other() -> None:
    assert table_gaps(SERVICE_NAME, EVENT_HANDLERS) == []


async def test_every_example_is_handled_ignored_or_skipped() -> None:
    assert await replay_problems(SERVICE_NAME, EventRouter(EVENT_HANDLERS, _deps())) == []
