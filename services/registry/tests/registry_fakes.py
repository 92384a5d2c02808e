"""Hand-written in-memory stand-ins for the registry's storage, clock and publisher."""

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from mailbox_link_contract.events import Envelope, MailboxOwner, utc_now
from mailbox_link_contract.failures import FailureCode
from mailbox_link_shared.publishing import RecordingPublisher
from registry.adapters.registry_store import UserSlots
from registry.domain.links import IN_FLIGHT, LinkRecord, LinkState, MailboxDetails


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self, start: datetime = datetime(2026, 11, 26, 9, 30, tzinfo=UTC)) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, by: timedelta) -> None:
        self.now += by


@dataclass
class _User:
    plan: str | None = None
    plan_changed_at: datetime | None = None
    held: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class OpenDecision:
    """A marker of an unfinished decision, as the Mongo adapter's open_decisions documents."""

    link_id: str
    event_id: str
    opened_at: datetime


class InMemoryRegistryStore:
    """RegistryStore in dicts, with the Mongo adapter's conditional semantics.

    The address-lock dict plays the unique index on the address, the marker dict the unique
    _id of an open decision; every method is one conditional change of one entry, as each
    Mongo method is one conditional update. Outboxes go through JSON, as the adapter keeps them.

    Tests may make a competing request (or a crash) `cut_in` just before an add_link, a
    decide or a lock_address, and see in `lock_requests` and `slot_requests` which links
    tried to take anything.
    """

    def __init__(self, clock: Callable[[], datetime] = utc_now) -> None:
        self._clock = clock
        self.links: dict[str, LinkRecord] = {}
        self.markers: dict[tuple[str, str], OpenDecision] = {}
        self.locks: dict[str, str] = {}
        self.users: dict[MailboxOwner, _User] = {}
        self.lock_requests: list[str] = []
        self.slot_requests: list[str] = []
        self._cut_ins: dict[str, Callable[[], Awaitable[None]]] = {}

    def cut_in(self, before: str, action: Callable[[], Awaitable[None]]) -> None:
        """Runs `action` once, just before the next call of the method named `before`."""
        self._cut_ins[before] = action

    async def _maybe_cut_in(self, method: str) -> None:
        action = self._cut_ins.pop(method, None)
        if action is not None:
            await action()

    async def add_link(self, record: LinkRecord) -> LinkRecord:
        await self._maybe_cut_in("add_link")
        existing = self.links.get(record.link_id)
        if existing is not None:
            return existing
        self.links[record.link_id] = replace(record, outbox=_through_json(record.outbox))
        return record

    async def get_link(self, link_id: str) -> LinkRecord | None:
        return self.links.get(link_id)

    async def get_links(self, link_ids: list[str]) -> list[LinkRecord]:
        return [self.links[i] for i in link_ids if i in self.links]

    async def decide(
        self,
        link_id: str,
        from_states: frozenset[LinkState],
        to_state: LinkState,
        outbox: dict[str, Any],
        mailbox: MailboxDetails | None = None,
    ) -> LinkRecord | None:
        await self._maybe_cut_in("decide")
        record = self.links.get(link_id)
        if record is None or record.state not in from_states:
            return None
        decided = replace(
            record,
            state=to_state,
            outbox=_through_json(outbox),
            mailbox=mailbox if mailbox is not None else record.mailbox,
        )
        self.links[link_id] = decided
        return decided

    async def open_decision(self, link_id: str, event_id: str) -> None:
        # Opening twice keeps the first marker and its time, as the duplicate insert does.
        self.markers.setdefault((link_id, event_id), OpenDecision(link_id, event_id, self._clock()))

    async def is_decision_open(self, link_id: str, event_id: str) -> bool:
        return (link_id, event_id) in self.markers

    async def close_decision(self, link_id: str, event_id: str) -> None:
        self.markers.pop((link_id, event_id), None)

    async def open_decisions(self, opened_before: datetime) -> list[tuple[str, str]]:
        return [
            (m.link_id, m.event_id) for m in self.markers.values() if m.opened_at < opened_before
        ]

    async def overdue(self, now: datetime) -> list[LinkRecord]:
        return [r for r in self.links.values() if r.state in IN_FLIGHT and r.expires_at <= now]

    async def lock_address(self, address: str, link_id: str) -> str:
        await self._maybe_cut_in("lock_address")
        self.lock_requests.append(link_id)
        return self.locks.setdefault(address, link_id)

    async def address_holder(self, address: str) -> str | None:
        return self.locks.get(address)

    async def unlock_address(self, address: str, link_id: str) -> None:
        if self.locks.get(address) == link_id:
            del self.locks[address]

    async def get_slots(self, owner: MailboxOwner) -> UserSlots:
        user = self.users.get(owner)
        if user is None:
            return UserSlots()
        return UserSlots(plan=user.plan, held=dict(user.held))

    async def take_slot(
        self, owner: MailboxOwner, link_id: str, address: str, plan: str | None, limit: int
    ) -> bool:
        self.slot_requests.append(link_id)
        user = self.users.get(owner)
        if user is None:
            # The upsert path: a user nobody has seen yet gets a document on `plan`.
            self.users[owner] = _User(plan=plan, held={link_id: address})
            return True
        if user.plan != plan or len(user.held) >= limit or link_id in user.held:
            return False
        user.held[link_id] = address
        return True

    async def free_slot(self, owner: MailboxOwner, link_id: str) -> None:
        user = self.users.get(owner)
        if user is not None:
            user.held.pop(link_id, None)

    async def set_plan(self, owner: MailboxOwner, plan: str, changed_at: datetime) -> bool:
        user = self.users.get(owner)
        if user is None:
            self.users[owner] = _User(plan=plan, plan_changed_at=changed_at)
            return True
        if user.plan_changed_at is not None and user.plan_changed_at >= changed_at:
            return False
        user.plan = plan
        user.plan_changed_at = changed_at
        return True

    async def mark_reconnect_required(self, link_id: str, code: FailureCode) -> bool:
        record = self.links.get(link_id)
        if record is None or record.state is not LinkState.LINKED or record.mailbox is None:
            return False
        mailbox = replace(record.mailbox, reconnect_required=code)
        self.links[link_id] = replace(record, mailbox=mailbox)
        return True


def _through_json(event: dict[str, Any] | None) -> dict[str, Any] | None:
    """The outbox as the adapter reads it back from the JSON text it stores."""
    if event is None:
        return None
    loaded: dict[str, Any] = json.loads(json.dumps(event, sort_keys=True))
    return loaded


class FailingOncePublisher(RecordingPublisher):
    """Records events, but the first publish of the given type fails as if Kafka were away."""

    def __init__(self, fail_type: str) -> None:
        super().__init__()
        self._fail_type: str | None = fail_type

    async def publish(self, event: Envelope) -> None:
        if event.type == self._fail_type:
            self._fail_type = None
            raise ConnectionError(f"broker away while publishing {event.type}")
        await super().publish(event)
