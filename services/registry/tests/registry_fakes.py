"""Hand-written in-memory stand-ins for the registry's storage, clock and publisher."""

import asyncio
import json
import random
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import SecretStr

from mailbox_link_contract.events import (
    Envelope,
    Failure,
    LinkRequested,
    LinkRequestedData,
    MailboxOwner,
    MailboxVerified,
    MailboxVerifiedData,
    ProviderType,
    ServerSettings,
    UserPlanChanged,
    UserPlanChangedData,
    VerificationFailed,
    VerificationFailedData,
    utc_now,
)
from mailbox_link_contract.failures import FailureCode
from mailbox_link_shared.crypto import SecretBox, generate_key
from mailbox_link_shared.publishing import RecordingPublisher
from registry.adapters.registry_store import Claim, PendingEntry, UserPlan, Verification
from registry.domain.health import HealthCheck, HealthRecord
from registry.domain.links import Decision, LinkRecord, LinkState, Progress


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self, start: datetime = datetime(2026, 11, 26, 9, 30, tzinfo=UTC)) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, by: timedelta) -> None:
        self.now += by


class InMemoryRegistryStore:
    """RegistryStore in dicts, with the Mongo adapter's semantics: inserts keep the first
    document under an id; hint writes simply overwrite.

    `hint_loss` (0..1) drops that share of hint writes, as lost updates on a store without
    isolation would: the protocol must stay correct with any of them lost. `interleave` lets
    other tasks run before every operation, in a random order, as concurrent requests on many
    connections would interleave their round trips. Tests may make a
    competing request (or a crash) `cut_in` just before a method, and see in `claimants` which
    links claimed anything.
    """

    def __init__(
        self,
        clock: Callable[[], datetime] = utc_now,
        hint_loss: float = 0.0,
        interleave: bool = False,
        seed: int = 0,
    ) -> None:
        self._clock = clock
        self.links: dict[str, LinkRecord] = {}
        self.decisions: dict[tuple[str, int], Decision] = {}
        self.verifications: dict[str, Verification] = {}
        self.claims: dict[str, Claim] = {}
        self.plans: dict[tuple[MailboxOwner, int], UserPlan] = {}
        self.slot_hints: dict[MailboxOwner, dict[int, str]] = {}
        self.pending_entries: dict[str, PendingEntry] = {}
        self.ended_at: dict[str, datetime] = {}
        self.claimants: list[str] = []
        self.health: dict[str, HealthRecord] = {}
        self.checks: dict[tuple[str, int], HealthCheck] = {}
        self._hint_loss = hint_loss
        self._interleave = interleave
        self._random = random.Random(seed)
        self._cut_ins: dict[str, Callable[[], Awaitable[None]]] = {}

    def cut_in(self, before: str, action: Callable[[], Awaitable[None]]) -> None:
        """Runs `action` once, just before the next call of the method named `before`."""
        self._cut_ins[before] = action

    async def _maybe_cut_in(self, method: str) -> None:
        if self._interleave:
            for _ in range(self._random.randrange(3)):
                await asyncio.sleep(0)
        action = self._cut_ins.pop(method, None)
        if action is not None:
            await action()

    def _hint_lost(self) -> bool:
        return self._hint_loss > 0 and self._random.random() < self._hint_loss

    async def add_link(self, record: LinkRecord) -> LinkRecord | None:
        await self._maybe_cut_in("add_link")
        existing = self.links.get(record.link_id)
        if existing is not None:
            return existing
        self.links[record.link_id] = replace(record, latest=None)
        return None

    async def get_link(self, link_id: str) -> LinkRecord | None:
        await self._maybe_cut_in("get_link")
        return self.links.get(link_id)

    async def note_progress(self, link_id: str, progress: Progress, at: datetime) -> None:
        await self._maybe_cut_in("note_progress")
        record = self.links.get(link_id)
        if record is not None and not self._hint_lost():
            self.links[link_id] = replace(record, progress=progress)
            if progress.at_rest_ended:
                self.ended_at[link_id] = at

    async def add_decision(self, link_id: str, decision: Decision) -> bool:
        await self._maybe_cut_in("add_decision")
        key = (link_id, decision.step)
        if key in self.decisions:
            return False
        self.decisions[key] = replace(decision, outbox=_through_json(decision.outbox))
        return True

    async def get_decision(self, link_id: str, step: int) -> Decision | None:
        await self._maybe_cut_in("get_decision")
        return self.decisions.get((link_id, step))

    async def add_verification(self, link_id: str, verification: Verification) -> None:
        await self._maybe_cut_in("add_verification")
        self.verifications.setdefault(link_id, verification)

    async def get_verification(self, link_id: str) -> Verification | None:
        await self._maybe_cut_in("get_verification")
        return self.verifications.get(link_id)

    async def drop_verification(self, link_id: str) -> None:
        await self._maybe_cut_in("drop_verification")
        self.verifications.pop(link_id, None)

    async def add_claim(self, claim: Claim) -> bool:
        await self._maybe_cut_in("add_claim")
        if claim.claim_id in self.claims:
            return False
        self.claimants.append(claim.link_id)
        self.claims[claim.claim_id] = claim
        return True

    async def get_claim(self, resource: str, generation: int) -> Claim | None:
        await self._maybe_cut_in("get_claim")
        return self.claims.get(Claim(resource, generation, "").claim_id)

    async def note_latest_claim(self, resource: str, generation: int) -> None:
        await self._maybe_cut_in("note_latest_claim")
        head = self.claims.get(Claim(resource, 0, "").claim_id)
        if head is not None and not self._hint_lost():
            self.claims[head.claim_id] = replace(head, latest=generation)

    async def get_plan_version(self, owner: MailboxOwner, version: int) -> UserPlan | None:
        await self._maybe_cut_in("get_plan_version")
        return self.plans.get((owner, version))

    async def add_plan_version(self, owner: MailboxOwner, plan: UserPlan) -> bool:
        await self._maybe_cut_in("add_plan_version")
        if (owner, plan.version) in self.plans:
            return False
        self.plans[(owner, plan.version)] = replace(plan, latest=plan.version)
        return True

    async def note_latest_plan(self, owner: MailboxOwner, version: int) -> None:
        await self._maybe_cut_in("note_latest_plan")
        head = self.plans.get((owner, 0))
        if head is not None and not self._hint_lost():
            self.plans[(owner, 0)] = replace(head, latest=version)

    async def get_slot_hints(self, owner: MailboxOwner) -> dict[int, str]:
        await self._maybe_cut_in("get_slot_hints")
        return dict(self.slot_hints.get(owner, {}))

    async def note_slot(self, owner: MailboxOwner, slot: int, link_id: str) -> None:
        await self._maybe_cut_in("note_slot")
        if not self._hint_lost():
            self.slot_hints.setdefault(owner, {})[slot] = link_id

    async def open_pending(self, entry: PendingEntry) -> None:
        await self._maybe_cut_in("open_pending")
        self.pending_entries.setdefault(entry.entry_id, entry)

    async def pending(self, limit: int) -> list[PendingEntry]:
        await self._maybe_cut_in("pending")
        return list(self.pending_entries.values())[:limit]

    async def close_pending(self, entry_id: str) -> None:
        await self._maybe_cut_in("close_pending")
        self.pending_entries.pop(entry_id, None)

    async def ended_before(self, cutoff: datetime, limit: int) -> list[LinkRecord]:
        await self._maybe_cut_in("ended_before")
        ended = [self.links[i] for i, at in self.ended_at.items() if at < cutoff]
        return ended[:limit]

    async def forget_link(self, link_id: str, steps: int, keep_verification: bool = False) -> None:
        await self._maybe_cut_in("forget_link")
        for step in range(1, steps + 1):
            self.decisions.pop((link_id, step), None)
            self.pending_entries.pop(f"{link_id}/{step}", None)
        if not keep_verification:
            self.verifications.pop(link_id, None)
        self.links.pop(link_id, None)
        self.ended_at.pop(link_id, None)

    async def links_naming_mailbox(self, mailbox_id: str) -> list[str]:
        return sorted(
            {
                link_id
                for (link_id, _), decision in self.decisions.items()
                if decision.mailbox is not None and decision.mailbox.mailbox_id == mailbox_id
            }
        )

    async def forget_claim(self, resource: str, generation: int) -> None:
        await self._maybe_cut_in("forget_claim")
        self.claims.pop(Claim(resource, generation, "").claim_id, None)

    async def add_health(self, health: HealthRecord) -> bool:
        await self._maybe_cut_in("add_health")
        if health.mailbox_id in self.health:
            return False
        self.health[health.mailbox_id] = health
        return True

    async def get_health(self, mailbox_id: str) -> HealthRecord | None:
        await self._maybe_cut_in("get_health")
        return self.health.get(mailbox_id)

    async def due_health(self, now: datetime, limit: int) -> list[HealthRecord]:
        await self._maybe_cut_in("due_health")
        due = [h for h in self.health.values() if h.next_check_at <= now]
        return sorted(due, key=lambda h: h.next_check_at)[:limit]

    async def note_check_requested(
        self, mailbox_id: str, number: int, next_check_at: datetime
    ) -> None:
        await self._maybe_cut_in("note_check_requested")
        health = self.health.get(mailbox_id)
        if health is not None and not self._hint_lost():
            self.health[mailbox_id] = replace(
                health, last_check=number, next_check_at=next_check_at
            )

    async def note_check_result(self, health: HealthRecord) -> None:
        await self._maybe_cut_in("note_check_result")
        stored = self.health.get(health.mailbox_id)
        if stored is not None and not self._hint_lost():
            self.health[health.mailbox_id] = replace(
                stored,
                applied=health.applied,
                last_checked_at=health.last_checked_at,
                last_failure=health.last_failure,
                refusals=health.refusals,
                back_off=health.back_off,
                next_check_at=health.next_check_at,
            )

    async def forget_health(self, mailbox_id: str) -> None:
        await self._maybe_cut_in("forget_health")
        self.health.pop(mailbox_id, None)
        for key in [k for k in self.checks if k[0] == mailbox_id]:
            del self.checks[key]

    async def add_check(self, check: HealthCheck) -> bool:
        await self._maybe_cut_in("add_check")
        key = (check.mailbox_id, check.number)
        if key in self.checks:
            return False
        self.checks[key] = check
        return True

    async def get_check(self, mailbox_id: str, number: int) -> HealthCheck | None:
        await self._maybe_cut_in("get_check")
        return self.checks.get((mailbox_id, number))

    async def forget_check(self, mailbox_id: str, number: int) -> None:
        self.checks.pop((mailbox_id, number), None)

    async def forget_checks_before(self, mailbox_id: str, number: int) -> None:
        for key in [k for k in self.checks if k[0] == mailbox_id and k[1] < number]:
            del self.checks[key]

    async def linked_without_health(self, limit: int) -> list[str]:
        tracked = {h.link_id for h in self.health.values()}
        linked = [
            link_id
            for link_id, record in self.links.items()
            if record.progress.state is LinkState.LINKED and link_id not in tracked
        ]
        return linked[:limit]


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


# --- the events other services send the registry --------------------------------------------


def request_data(owner: MailboxOwner, link_id: str, address: str) -> LinkRequestedData:
    imap = ServerSettings(host="imap.example.org", port=993, security="ssl", username=address)
    smtp = ServerSettings(host="smtp.example.org", port=465, security="ssl", username=address)
    sealed = SecretBox({"k": SecretStr(generate_key())}, "k").seal("{}", address)
    return LinkRequestedData(
        link_id=link_id,
        owner=owner,
        address=address,
        provider=ProviderType.IMAP,
        imap=imap,
        smtp=smtp,
        credentials=sealed,
    )


def requested_event(
    owner: MailboxOwner, link_id: str, address: str = "box@example.org"
) -> LinkRequested:
    data = request_data(owner, link_id, address)
    return LinkRequested(correlation_id=link_id, producer="link-api", data=data)


def verified_event(
    owner: MailboxOwner, link_id: str, address: str = "box@example.org"
) -> MailboxVerified:
    data = MailboxVerifiedData(**request_data(owner, link_id, address).model_dump())
    return MailboxVerified(correlation_id=link_id, producer="imap-verifier", data=data)


def failed_event(
    owner: MailboxOwner, link_id: str, address: str = "box@example.org"
) -> VerificationFailed:
    data = VerificationFailedData(
        link_id=link_id,
        owner=owner,
        address=address,
        provider=ProviderType.IMAP,
        failure=Failure.of(FailureCode.IMAP_AUTH_FAILED, "NO [AUTHENTICATIONFAILED]"),
    )
    return VerificationFailed(correlation_id=link_id, producer="imap-verifier", data=data)


def plan_changed_event(owner: MailboxOwner, plan: str, clock: FakeClock) -> UserPlanChanged:
    data = UserPlanChangedData(owner=owner, plan=plan, changed_at=clock())
    return UserPlanChanged(correlation_id="billing", producer="billing", data=data)
