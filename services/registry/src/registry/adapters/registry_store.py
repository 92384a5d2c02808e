"""MongoDB storage of the registry: link records, address locks and users' plan slots.

No operation spans two documents atomically; each is one insert or one conditional update.
Why that is enough is in ../../DESIGN.md.
"""

import contextlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from pymongo import ASCENDING, AsyncMongoClient, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from mailbox_link_contract.events import (
    AuthMethod,
    MailboxOwner,
    ProviderType,
    ServerSettings,
    utc_now,
)
from mailbox_link_contract.failures import FailureCode
from mailbox_link_contract.values import EncryptedSecret
from registry.domain.links import IN_FLIGHT, LinkRecord, LinkState, MailboxDetails


@dataclass(frozen=True)
class UserSlots:
    """A user's plan and the links holding their plan slots (link id to address)."""

    plan: str | None = None
    held: dict[str, str] = field(default_factory=dict)


class RegistryStore(Protocol):
    """What the handlers need from storage."""

    async def add_link(self, record: LinkRecord) -> LinkRecord: ...
    async def get_link(self, link_id: str) -> LinkRecord | None: ...
    async def get_links(self, link_ids: list[str]) -> list[LinkRecord]: ...
    async def decide(
        self,
        link_id: str,
        from_states: frozenset[LinkState],
        to_state: LinkState,
        outbox: dict[str, Any],
        mailbox: MailboxDetails | None = None,
    ) -> LinkRecord | None: ...
    async def open_decision(self, link_id: str, event_id: str) -> None: ...
    async def is_decision_open(self, link_id: str, event_id: str) -> bool: ...
    async def close_decision(self, link_id: str, event_id: str) -> None: ...
    async def open_decisions(self, opened_before: datetime) -> list[tuple[str, str]]: ...
    async def overdue(self, now: datetime) -> list[LinkRecord]: ...
    async def lock_address(self, address: str, link_id: str) -> str: ...
    async def address_holder(self, address: str) -> str | None: ...
    async def unlock_address(self, address: str, link_id: str) -> None: ...
    async def get_slots(self, owner: MailboxOwner) -> UserSlots: ...
    async def take_slot(
        self, owner: MailboxOwner, link_id: str, address: str, plan: str | None, limit: int
    ) -> bool: ...
    async def free_slot(self, owner: MailboxOwner, link_id: str) -> None: ...
    async def set_plan(self, owner: MailboxOwner, plan: str, changed_at: datetime) -> bool: ...
    async def mark_reconnect_required(self, link_id: str, code: FailureCode) -> bool: ...


class MongoRegistryStore:
    """RegistryStore on MongoDB (or a MongoDB-protocol server)."""

    def __init__(self, client: AsyncMongoClient[dict[str, Any]], database: str) -> None:
        db: AsyncDatabase[dict[str, Any]] = client[database]
        self._links = db["links"]
        self._locks = db["address_locks"]
        self._users = db["users"]
        self._open_decisions = db["open_decisions"]

    async def create_indexes(self) -> None:
        """Creates the housekeeping index (idempotent); every decision uses _id alone."""
        await self._links.create_index(
            [("state", ASCENDING), ("expires_at", ASCENDING)], name="in_flight_by_expiry"
        )

    async def add_link(self, record: LinkRecord) -> LinkRecord:
        """Stores a new link record, or returns the one already stored under its id."""
        try:
            await self._links.insert_one(_record_document(record))
        except DuplicateKeyError:
            existing = await self.get_link(record.link_id)
            if existing is None:  # pragma: no cover - records are never deleted
                raise
            return existing
        return record

    async def get_link(self, link_id: str) -> LinkRecord | None:
        document = await self._links.find_one({"_id": link_id})
        return _record(document) if document else None

    async def get_links(self, link_ids: list[str]) -> list[LinkRecord]:
        if not link_ids:
            return []
        return [_record(d) async for d in self._links.find({"_id": {"$in": link_ids}})]

    async def decide(
        self,
        link_id: str,
        from_states: frozenset[LinkState],
        to_state: LinkState,
        outbox: dict[str, Any],
        mailbox: MailboxDetails | None = None,
    ) -> LinkRecord | None:
        """Moves the link to `to_state` if it is in one of `from_states`; None if it was not."""
        changes: dict[str, Any] = {"state": to_state.value, **_outbox_fields(outbox)}
        if mailbox is not None:
            changes["mailbox"] = _mailbox_document(mailbox)
        document = await self._links.find_one_and_update(
            {"_id": link_id, "state": {"$in": sorted(s.value for s in from_states)}},
            {"$set": changes},
            return_document=ReturnDocument.AFTER,
        )
        return _record(document) if document else None

    async def open_decision(self, link_id: str, event_id: str) -> None:
        """Notes, before deciding, that the decision announced by `event_id` is unfinished."""
        document = {"link_id": link_id, "event_id": event_id, "opened_at": utc_now()}
        with contextlib.suppress(DuplicateKeyError):
            await self._open_decisions.insert_one({"_id": f"{link_id}/{event_id}", **document})

    async def is_decision_open(self, link_id: str, event_id: str) -> bool:
        return await self._open_decisions.find_one({"_id": f"{link_id}/{event_id}"}) is not None

    async def close_decision(self, link_id: str, event_id: str) -> None:
        await self._open_decisions.delete_one({"_id": f"{link_id}/{event_id}"})

    async def open_decisions(self, opened_before: datetime) -> list[tuple[str, str]]:
        query = {"opened_at": {"$lt": opened_before}}
        return [(d["link_id"], d["event_id"]) async for d in self._open_decisions.find(query)]

    async def overdue(self, now: datetime) -> list[LinkRecord]:
        query = {"state": {"$in": sorted(s.value for s in IN_FLIGHT)}, "expires_at": {"$lte": now}}
        return [_record(d) async for d in self._links.find(query)]

    async def lock_address(self, address: str, link_id: str) -> str:
        """Locks the address for the link; returns the link that holds it (maybe another)."""
        while True:
            try:
                await self._locks.insert_one({"_id": address, "link_id": link_id})
                return link_id
            except DuplicateKeyError:
                document = await self._locks.find_one({"_id": address})
                if document is not None:
                    return str(document["link_id"])
                # Unlocked between our insert and our read: try again.

    async def address_holder(self, address: str) -> str | None:
        document = await self._locks.find_one({"_id": address})
        return str(document["link_id"]) if document else None

    async def unlock_address(self, address: str, link_id: str) -> None:
        # Read first: most calls find nothing to do, and a filter that matches nothing makes
        # FerretDB scan the collection. The delete stays conditional on the holder.
        if await self.address_holder(address) == link_id:
            await self._locks.delete_one({"_id": address, "link_id": link_id})

    async def get_slots(self, owner: MailboxOwner) -> UserSlots:
        document = await self._users.find_one({"_id": _owner_key(owner)})
        if document is None:
            return UserSlots()
        return UserSlots(plan=document.get("plan"), held=dict(document.get("held", {})))

    async def take_slot(
        self, owner: MailboxOwner, link_id: str, address: str, plan: str | None, limit: int
    ) -> bool:
        """Gives the link a slot if the user holds fewer than `limit` and is still on `plan`."""
        try:
            result = await self._users.update_one(
                {
                    "_id": _owner_key(owner),
                    "plan": plan,
                    "held_count": {"$lt": limit},
                    f"held.{link_id}": {"$exists": False},
                },
                {
                    "$set": {f"held.{link_id}": address, "owner": owner.model_dump()},
                    "$inc": {"held_count": 1},
                },
                upsert=True,
            )
        except DuplicateKeyError:
            return False  # the user exists but the condition failed: the upsert hit their _id
        return result.modified_count == 1 or result.upserted_id is not None

    async def free_slot(self, owner: MailboxOwner, link_id: str) -> None:
        if link_id not in (await self.get_slots(owner)).held:
            return  # as in unlock_address: skip a filter that would match nothing
        await self._users.update_one(
            {"_id": _owner_key(owner), f"held.{link_id}": {"$exists": True}},
            {"$unset": {f"held.{link_id}": ""}, "$inc": {"held_count": -1}},
        )

    async def set_plan(self, owner: MailboxOwner, plan: str, changed_at: datetime) -> bool:
        """Puts the user on the plan unless a newer change is already stored."""
        try:
            result = await self._users.update_one(
                {
                    "_id": _owner_key(owner),
                    "$or": [
                        {"plan_changed_at": {"$lt": changed_at}},
                        {"plan_changed_at": None},
                    ],
                },
                {
                    "$set": {"plan": plan, "plan_changed_at": changed_at},
                    "$setOnInsert": {"owner": owner.model_dump(), "held": {}, "held_count": 0},
                },
                upsert=True,
            )
        except DuplicateKeyError:
            return False  # a newer change is stored
        return result.modified_count == 1 or result.upserted_id is not None

    async def mark_reconnect_required(self, link_id: str, code: FailureCode) -> bool:
        """Flags a linked mailbox as needing its user to reconnect; False if not linked."""
        result = await self._links.update_one(
            {"_id": link_id, "state": LinkState.LINKED.value},
            {"$set": {"mailbox.reconnect_required": code.value}},
        )
        return result.matched_count == 1


def _owner_key(owner: MailboxOwner) -> str:
    return f"{owner.account_id}\x1f{owner.user_id}"


def _record_document(record: LinkRecord) -> dict[str, Any]:
    return {
        "_id": record.link_id,
        "account_id": record.owner.account_id,
        "user_id": record.owner.user_id,
        "address": record.address,
        "provider": record.provider.value,
        "state": record.state.value,
        "expires_at": record.expires_at,
        "mailbox": _mailbox_document(record.mailbox) if record.mailbox else None,
        **_outbox_fields(record.outbox),
    }


def _outbox_fields(event: dict[str, Any] | None) -> dict[str, Any]:
    # The event is kept as the JSON text that gets published, not as a nested document: it is
    # opaque here, and FerretDB re-reads every nested document of a collection on each update,
    # which made decisions several times slower (DESIGN.md, "Measured on FerretDB").
    if event is None:
        return {"outbox": None}
    return {"outbox": json.dumps(event, sort_keys=True)}


def _mailbox_document(mailbox: MailboxDetails) -> dict[str, Any]:
    return {
        "mailbox_id": mailbox.mailbox_id,
        "imap": mailbox.imap.model_dump(mode="json"),
        "smtp": mailbox.smtp.model_dump(mode="json"),
        "credentials": mailbox.credentials.model_dump() if mailbox.credentials else None,
        "linked_at": mailbox.linked_at,
        "auth": mailbox.auth.value,
        "reconnect_required": mailbox.reconnect_required,
    }


def _record(document: dict[str, Any]) -> LinkRecord:
    mailbox = document.get("mailbox")
    return LinkRecord(
        link_id=document["_id"],
        owner=MailboxOwner(account_id=document["account_id"], user_id=document["user_id"]),
        address=document["address"],
        provider=ProviderType(document["provider"]),
        state=LinkState(document["state"]),
        expires_at=document["expires_at"],
        mailbox=_mailbox(mailbox) if mailbox else None,
        outbox=json.loads(document["outbox"]) if document.get("outbox") else None,
    )


def _mailbox(document: dict[str, Any]) -> MailboxDetails:
    return MailboxDetails(
        mailbox_id=document["mailbox_id"],
        imap=ServerSettings.model_validate(document["imap"]),
        smtp=ServerSettings.model_validate(document["smtp"]),
        credentials=_optional_secret(document.get("credentials")),
        linked_at=document["linked_at"],
        auth=AuthMethod(document.get("auth", AuthMethod.PASSWORD)),
        reconnect_required=_optional_code(document.get("reconnect_required")),
    )


def _optional_secret(value: dict[str, Any] | None) -> EncryptedSecret | None:
    return EncryptedSecret.model_validate(value) if value else None


def _optional_code(value: str | None) -> FailureCode | None:
    return FailureCode(value) if value else None
