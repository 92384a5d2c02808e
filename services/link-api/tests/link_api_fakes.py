"""Hand-written in-memory stand-ins for link-api's storage, DNS and autoconfig, for tests."""

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TypeVar

from link_api.adapters.dns_lookup import Answer, SrvTarget
from link_api.adapters.link_store import IdempotencyRecord, SendDecision, Unsent
from link_api.domain.link_status import TERMINAL, LinkProgress, LinkView
from link_api.domain.providers import Discovered

DNS_TTL = 300
R = TypeVar("R")


class InMemoryLinkStore:
    """LinkStore kept in dicts, with the same semantics as the Mongo one (atomically)."""

    def __init__(self) -> None:
        self.links: dict[str, LinkView] = {}
        self.in_flight: dict[str, tuple[str, datetime]] = {}
        self.keys: dict[str, IdempotencyRecord] = {}
        self.outboxes: dict[str, str] = {}
        self.outbox_traces: dict[str, dict[str, str]] = {}
        self.decisions: dict[str, SendDecision] = {}
        self.unsent_since: dict[str, datetime] = {}

    async def insert_link(
        self, link: LinkView, outbox: str | None = None, trace: Mapping[str, str] | None = None
    ) -> str | None:
        self.unsent_since.setdefault(link.link_id, link.created_at)
        if link.link_id in self.links:
            return self.outboxes.get(link.link_id)
        self.links[link.link_id] = link
        if outbox is not None:
            self.outboxes[link.link_id] = outbox
            if trace:
                self.outbox_traces[link.link_id] = dict(trace)
        return outbox

    async def delete_link(self, link_id: str) -> None:
        self.links.pop(link_id, None)
        self.outboxes.pop(link_id, None)
        self.unsent_since.pop(link_id, None)

    async def get_link(self, link_id: str) -> LinkView | None:
        return self.links.get(link_id)

    async def get_outbox(self, link_id: str) -> str | None:
        return self.outboxes.get(link_id)

    async def get_outbox_trace(self, link_id: str) -> dict[str, str]:
        if link_id not in self.outboxes:
            return {}
        return dict(self.outbox_traces.get(link_id, {}))

    async def decide_send(self, link_id: str, decision: SendDecision) -> SendDecision:
        return self.decisions.setdefault(link_id, decision)

    async def send_decision(self, link_id: str) -> SendDecision | None:
        return self.decisions.get(link_id)

    async def mark_sent(self, link_id: str) -> None:
        self.unsent_since.pop(link_id, None)

    async def unsent(self, listed_before: datetime, limit: int) -> list[Unsent]:
        listed = sorted((since, link_id) for link_id, since in self.unsent_since.items())
        return [Unsent(link_id, since) for since, link_id in listed if since < listed_before][
            :limit
        ]

    async def count_unsent(self) -> int:
        return len(self.unsent_since)

    async def advance_link(self, link_id: str, progress: LinkProgress) -> LinkView | None:
        link = self.links.get(link_id)
        if link is None or link.status not in progress.allowed_from:
            return None
        moved = replace(link, **progress.changes())
        self.links[link_id] = moved
        if progress.status in TERMINAL:
            self.outboxes.pop(link_id, None)  # as the Mongo store drops an ended link's outbox
        return moved

    async def claim_in_flight(
        self, key: str, link_id: str, now: datetime, expires_at: datetime
    ) -> str:
        holder = self.in_flight.get(key)
        if holder is not None and holder[1] > now and not self._ended(holder[0]):
            return holder[0]
        self.in_flight[key] = (link_id, expires_at)
        return link_id

    def _ended(self, link_id: str) -> bool:
        # As in the Mongo store, a link that ended has ended its claim.
        link = self.links.get(link_id)
        return link is not None and link.status in TERMINAL

    async def release_in_flight(self, link_id: str) -> None:
        self.in_flight = {k: v for k, v in self.in_flight.items() if v[0] != link_id}

    async def find_idempotency_key(self, scope: str) -> IdempotencyRecord | None:
        return self.keys.get(scope)

    async def remember_idempotency_key(
        self, scope: str, record: IdempotencyRecord
    ) -> IdempotencyRecord:
        return self.keys.setdefault(scope, record)


@dataclass
class FakeDns:
    """Answers from dicts (absent names have no records); raises what `errors` names.

    `errors` is keyed by "<kind> <name>", e.g. "mx example.org"; every question is counted.
    """

    mx_records: dict[str, list[str]] = field(default_factory=dict)
    txt_records: dict[str, list[str]] = field(default_factory=dict)
    srv_records: dict[str, list[SrvTarget]] = field(default_factory=dict)
    ttls: dict[str, int] = field(default_factory=dict)
    errors: dict[str, Exception] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)

    def fail(self, domain: str, error: Exception) -> None:
        self.errors[f"mx {domain}"] = error
        self.errors[f"txt {domain}"] = error

    async def mx(self, domain: str) -> Answer[list[str]]:
        records = self._ask("mx", domain, self.mx_records)
        return Answer(records, self.ttls.get(f"mx {domain}", DNS_TTL))

    async def txt(self, domain: str) -> Answer[list[str]]:
        records = self._ask("txt", domain, self.txt_records)
        return Answer(records, self.ttls.get(f"txt {domain}", DNS_TTL))

    async def srv(self, name: str) -> Answer[list[SrvTarget]]:
        records = self._ask("srv", name, self.srv_records)
        return Answer(records, self.ttls.get(f"srv {name}", DNS_TTL))

    def _ask(self, kind: str, name: str, table: dict[str, list[R]]) -> list[R]:
        key = f"{kind} {name}"
        self.calls.append(key)
        if key in self.errors:
            raise self.errors[key]
        return list(table.get(name, []))

    def asked(self, kind: str) -> list[str]:
        return [c for c in self.calls if c.startswith(kind + " ")]


@dataclass
class FakeAutoconfig:
    """Returns `found` (or None) for every domain, and counts the fetches."""

    found: Discovered | None = None
    calls: list[tuple[str, str]] = field(default_factory=list)

    async def fetch(self, domain: str, address: str) -> Discovered | None:
        self.calls.append((domain, address))
        return self.found
