"""The port through which handlers emit events; Kafka in production, a list in unit tests."""

from typing import Protocol

from mailbox_link_contract.events import Envelope


class EventPublisher(Protocol):
    """Something that durably emits an event."""

    async def publish(self, event: Envelope) -> None:
        """Emits the event; returns once it is stored."""


class RecordingPublisher:
    """Keeps published events in memory, for unit tests of handlers."""

    def __init__(self) -> None:
        self.events: list[Envelope] = []

    async def publish(self, event: Envelope) -> None:
        """Records the event."""
        self.events.append(event)
