"""Hand-written in-memory stand-in for the registry's storage, for handler tests."""

from dataclasses import replace
from typing import Any

from mailbox_link_shared.events import MailboxOwner
from registry.adapters.mailbox_store import AddressTaken, LinkedMailbox


class InMemoryMailboxStore:
    """MailboxStore in dicts; the address dict plays the unique index."""

    def __init__(self) -> None:
        self.by_address: dict[str, LinkedMailbox] = {}
        self.outcomes: dict[str, dict[str, Any]] = {}
        self.plans: dict[MailboxOwner, str] = {}

    async def find_by_address(self, address: str) -> LinkedMailbox | None:
        return self.by_address.get(address)

    async def count_for_owner(self, owner: MailboxOwner) -> int:
        return len(await self.list_for_owner(owner))

    async def list_for_owner(self, owner: MailboxOwner) -> list[LinkedMailbox]:
        return [m for m in self.by_address.values() if m.owner == owner]

    async def insert(self, mailbox: LinkedMailbox) -> None:
        if mailbox.address in self.by_address:
            raise AddressTaken(mailbox.address)
        self.by_address[mailbox.address] = mailbox

    async def refresh(self, mailbox: LinkedMailbox) -> LinkedMailbox:
        current = self.by_address[mailbox.address]
        updated = replace(mailbox, mailbox_id=current.mailbox_id, linked_at=current.linked_at)
        self.by_address[mailbox.address] = updated
        return updated

    async def delete(self, owner: MailboxOwner, address: str) -> LinkedMailbox | None:
        mailbox = self.by_address.get(address)
        if mailbox is None or mailbox.owner != owner:
            return None
        return self.by_address.pop(address)

    async def find_outcome(self, link_id: str) -> dict[str, Any] | None:
        return self.outcomes.get(link_id)

    async def save_outcome(self, link_id: str, event: dict[str, Any]) -> None:
        self.outcomes[link_id] = event

    async def get_plan(self, owner: MailboxOwner) -> str | None:
        return self.plans.get(owner)

    async def set_plan(self, owner: MailboxOwner, plan: str) -> None:
        self.plans[owner] = plan
