"""Hand-written in-memory stand-ins for link-api's storage, for handler tests."""

from datetime import datetime
from typing import Any

from link_api.adapters.link_store import IdempotencyRecord
from link_api.domain.link_status import LinkStatus, LinkView
from mailbox_link_shared.events import Failure


class InMemoryLinkStore:
    """LinkStore kept in dicts, with the same conditional semantics as the Mongo one."""

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

    async def advance_link(
        self,
        link_id: str,
        status: LinkStatus,
        allowed_from: frozenset[LinkStatus],
        at: datetime,
        failure: Failure | None = None,
        mailbox_id: str | None = None,
        already_linked: bool = False,
    ) -> LinkView | None:
        link = self.links.get(link_id)
        if link is None or link.status not in allowed_from:
            return None
        changes: dict[str, Any] = {"status": status, "updated_at": at}
        if already_linked:
            changes["already_linked"] = True
        if failure is not None:
            changes["failure"] = failure
        if mailbox_id is not None:
            changes["mailbox_id"] = mailbox_id
        moved = LinkView(**{**link.__dict__, **changes})
        self.links[link_id] = moved
        return moved

    async def claim_in_flight(
        self, key: str, link_id: str, now: datetime, expires_at: datetime
    ) -> str:
        holder = self.in_flight.get(key)
        if holder is not None and holder[1] > now:
            return holder[0]
        self.in_flight[key] = (link_id, expires_at)
        return link_id

    async def release_in_flight(self, link_id: str) -> None:
        self.in_flight = {k: v for k, v in self.in_flight.items() if v[0] != link_id}

    async def find_idempotency_key(self, scope: str) -> IdempotencyRecord | None:
        return self.keys.get(scope)

    async def remember_idempotency_key(
        self, scope: str, record: IdempotencyRecord
    ) -> IdempotencyRecord:
        return self.keys.setdefault(scope, record)
