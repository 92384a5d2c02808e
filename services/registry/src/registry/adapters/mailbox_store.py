"""MongoDB storage of linked mailboxes, user plans and the outcome of each link request.

A mailbox document's _id is its normalized address: _id's unique index is what makes 'one
account per mailbox' hold even when two requests race past the check, and a lookup by address
is a primary-key read (FerretDB's SQLite backend uses no secondary index for queries).
"""

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from pymongo import ASCENDING, AsyncMongoClient, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from mailbox_link_shared.crypto import EncryptedSecret
from mailbox_link_shared.events import MailboxOwner, ProviderType, ServerSettings


class AddressTaken(Exception):
    """Another mailbox document already holds this address."""


@dataclass(frozen=True)
class LinkedMailbox:
    """A mailbox linked to one user, with what the product needs to use it."""

    mailbox_id: str
    address: str
    owner: MailboxOwner
    provider: ProviderType
    imap: ServerSettings
    smtp: ServerSettings
    credentials: EncryptedSecret
    link_id: str
    linked_at: datetime


class MailboxStore(Protocol):
    """What the handlers need from storage."""

    async def find_by_address(self, address: str) -> LinkedMailbox | None: ...
    async def count_for_owner(self, owner: MailboxOwner) -> int: ...
    async def list_for_owner(self, owner: MailboxOwner) -> list[LinkedMailbox]: ...
    async def insert(self, mailbox: LinkedMailbox) -> None: ...
    async def refresh(self, mailbox: LinkedMailbox) -> LinkedMailbox: ...
    async def delete(self, owner: MailboxOwner, address: str) -> LinkedMailbox | None: ...
    async def find_outcome(self, link_id: str) -> dict[str, Any] | None: ...
    async def save_outcome(self, link_id: str, event: dict[str, Any]) -> None: ...
    async def get_plan(self, owner: MailboxOwner) -> str | None: ...
    async def set_plan(self, owner: MailboxOwner, plan: str) -> None: ...


class MongoMailboxStore:
    """MailboxStore on MongoDB."""

    def __init__(self, client: AsyncMongoClient[dict[str, Any]], database: str) -> None:
        db: AsyncDatabase[dict[str, Any]] = client[database]
        self._mailboxes = db["mailboxes"]
        self._outcomes = db["link_outcomes"]
        self._plans = db["user_plans"]

    async def create_indexes(self) -> None:
        """Creates the lookup index by owner (idempotent); _id is the address."""
        await self._mailboxes.create_index(
            [("owner.account_id", ASCENDING), ("owner.user_id", ASCENDING)], name="by_owner"
        )

    async def find_by_address(self, address: str) -> LinkedMailbox | None:
        document = await self._mailboxes.find_one({"_id": address})
        return _from_document(document) if document else None

    async def count_for_owner(self, owner: MailboxOwner) -> int:
        return await self._mailboxes.count_documents(_owner_filter(owner))

    async def list_for_owner(self, owner: MailboxOwner) -> list[LinkedMailbox]:
        cursor = self._mailboxes.find(_owner_filter(owner)).sort("linked_at", ASCENDING)
        return [_from_document(document) async for document in cursor]

    async def insert(self, mailbox: LinkedMailbox) -> None:
        try:
            await self._mailboxes.insert_one(_to_document(mailbox))
        except DuplicateKeyError:
            raise AddressTaken(mailbox.address) from None

    async def refresh(self, mailbox: LinkedMailbox) -> LinkedMailbox:
        changes = _to_document(mailbox)
        for unchanged in ("_id", "mailbox_id", "linked_at", "owner"):
            changes.pop(unchanged)
        document = await self._mailboxes.find_one_and_update(
            {"_id": mailbox.address, **_owner_filter(mailbox.owner)},
            {"$set": changes},
            return_document=ReturnDocument.AFTER,
        )
        if document is None:
            raise LookupError(mailbox.address)
        return _from_document(document)

    async def delete(self, owner: MailboxOwner, address: str) -> LinkedMailbox | None:
        document = await self._mailboxes.find_one_and_delete(
            {"_id": address, **_owner_filter(owner)}
        )
        return _from_document(document) if document else None

    async def find_outcome(self, link_id: str) -> dict[str, Any] | None:
        document = await self._outcomes.find_one({"_id": link_id})
        return dict(document["event"]) if document else None

    async def save_outcome(self, link_id: str, event: dict[str, Any]) -> None:
        await self._outcomes.replace_one({"_id": link_id}, {"event": event}, upsert=True)

    async def get_plan(self, owner: MailboxOwner) -> str | None:
        document = await self._plans.find_one({"_id": _owner_key(owner)})
        return str(document["plan"]) if document else None

    async def set_plan(self, owner: MailboxOwner, plan: str) -> None:
        await self._plans.replace_one({"_id": _owner_key(owner)}, {"plan": plan}, upsert=True)


def _owner_filter(owner: MailboxOwner) -> dict[str, str]:
    return {"owner.account_id": owner.account_id, "owner.user_id": owner.user_id}


def _owner_key(owner: MailboxOwner) -> str:
    return f"{owner.account_id}\x1f{owner.user_id}"


def _to_document(mailbox: LinkedMailbox) -> dict[str, Any]:
    return {
        "_id": mailbox.address,
        "mailbox_id": mailbox.mailbox_id,
        "owner": mailbox.owner.model_dump(),
        "provider": mailbox.provider.value,
        "imap": mailbox.imap.model_dump(mode="json"),
        "smtp": mailbox.smtp.model_dump(mode="json"),
        "credentials": mailbox.credentials.model_dump(),
        "link_id": mailbox.link_id,
        "linked_at": mailbox.linked_at,
    }


def _from_document(document: dict[str, Any]) -> LinkedMailbox:
    return LinkedMailbox(
        mailbox_id=document["mailbox_id"],
        address=document["_id"],
        owner=MailboxOwner.model_validate(document["owner"]),
        provider=ProviderType(document["provider"]),
        imap=ServerSettings.model_validate(document["imap"]),
        smtp=ServerSettings.model_validate(document["smtp"]),
        credentials=EncryptedSecret.model_validate(document["credentials"]),
        link_id=document["link_id"],
        linked_at=document["linked_at"],
    )
