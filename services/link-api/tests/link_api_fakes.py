"""Hand-written in-memory stand-ins for link-api's storage, DNS and autoconfig, for tests."""

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TypeVar

from link_api.adapters.dns_lookup import Answer, SrvTarget
from link_api.adapters.link_store import IdempotencyRecord
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

    async def insert_link(self, link: LinkView) -> None:
        self.links[link.link_id] = link

    async def delete_link(self, link_id: str) -> None:
        self.links.pop(link_id, None)

    async def get_link(self, link_id: str) -> LinkView | None:
        return self.links.get(link_id)

    async def advance_link(self, link_id: str, progress: LinkProgress) -> LinkView | None:
        link = self.links.get(link_id)
        if link is None or link.status not in progress.allowed_from:
            return None
        moved = replace(link, **progress.changes())
        self.links[link_id] = moved
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
