"""One way every service routes consumed events: a handler table, event model -> handler.

Each service's handlers.py declares `EVENT_HANDLERS` (cosmicpython's message bus is the model):
every event type on the topics the service consumes (the catalogue says which) is either
handled or `ignore`d on purpose, with a comment saying why; a unit test per service replays
every example of the contract through its table. Types absent from the table (those added
after the service was deployed) are skipped and committed past, as the contract promises.
"""

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Generic, TypeVar

from mailbox_link_contract.events import Envelope
from mailbox_link_contract.files import example_paths
from mailbox_link_contract.reading import NotHandled, Unreadable, read_event
from mailbox_link_contract.topics import event_type_of, event_types_consumed_by

D = TypeVar("D")
# A handler gets one event (of the model it is listed under) and the service's dependencies.
EventHandler = Callable[[Any, D], Awaitable[None]]
EventHandlers = Mapping[type[Envelope], EventHandler[D]]


async def ignore(event: Envelope, deps: object) -> None:
    """Knowingly does nothing with an event of a consumed topic (the table says why)."""


class EventRouter(Generic[D]):
    """A service's handler table with its dependencies bound, as consumers use it."""

    def __init__(self, handlers: EventHandlers[D], deps: D) -> None:
        self._handlers = dict(handlers)
        self._deps = deps
        self.models: dict[str, type[Envelope]] = {event_type_of(m): m for m in handlers}

    def read(self, raw: bytes | str) -> Envelope | NotHandled | Unreadable:
        """Reads a record's value as an event of a type in the table (see reading.py)."""
        return read_event(raw, self.models)

    def ignores(self, event: Envelope) -> bool:
        """Tells whether the table knowingly ignores this event's type."""
        return self._handlers.get(type(event)) is ignore

    async def handle(self, event: Envelope) -> None:
        """Runs the event's handler."""
        await self._handlers[type(event)](event, self._deps)


def table_gaps(service: str, handlers: EventHandlers[Any]) -> list[str]:
    """Returns what is wrong with a service's table against the catalogue: types of its topics
    it neither handles nor ignores, and types it lists that none of its topics carries."""
    carried = event_types_consumed_by(service)
    listed = {event_type_of(model) for model in handlers}
    return [f"unlisted: {t}" for t in sorted(carried - listed)] + [
        f"not on its topics: {t}" for t in sorted(listed - carried)
    ]


async def replay_examples(service: str, router: EventRouter[Any]) -> dict[str, str]:
    """Reads every example of the contract as `service` would and handles what it lists;
    returns each example's outcome: handled, ignored, or skipped (not on its topics)."""
    consumed = event_types_consumed_by(service)
    outcomes = {}
    for path in example_paths():
        event = router.read(path.read_bytes())
        name = f"{path.parent.name}/{path.name}"
        if isinstance(event, Unreadable):
            outcomes[name] = f"unreadable: {event.reason}"
        elif isinstance(event, NotHandled):
            outcomes[name] = "skipped" if event.event_type not in consumed else "unlisted"
        else:
            await router.handle(event)
            outcomes[name] = "ignored" if router.ignores(event) else "handled"
    return outcomes


async def replay_problems(service: str, router: EventRouter[Any]) -> list[str]:
    """Replays every example (replay_examples) and returns what went wrong: an example of a
    topic the service reads that it neither handled nor ignored, one of another topic that it
    did not skip, or a table that handled nothing at all."""
    consumed = event_types_consumed_by(service)
    outcomes = await replay_examples(service, router)
    problems = [
        f"{name}: {outcome}"
        for name, outcome in outcomes.items()
        if outcome
        not in (("handled", "ignored") if name.split("/")[0] in consumed else ("skipped",))
    ]
    return problems + ([] if "handled" in outcomes.values() else ["no example was handled"])
