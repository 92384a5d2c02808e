"""MongoDB storage of link-api's own view: links, in-flight claims and idempotency keys."""

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from pymongo import AsyncMongoClient, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from link_api.domain.link_status import LinkProgress, LinkStatus, LinkView
from mailbox_link_contract.events import AuthMethod, Failure, MailboxOwner, ProviderType


@dataclass(frozen=True)
class IdempotencyRecord:
    """An Idempotency-Key already used by a caller, and the link it produced."""

    link_id: str
    fingerprint: str


class LinkStore(Protocol):
    """What the handlers need from storage."""

    async def insert_link(self, link: LinkView) -> None: ...
    async def delete_link(self, link_id: str) -> None: ...
    async def get_link(self, link_id: str) -> LinkView | None: ...
    async def advance_link(self, link_id: str, progress: LinkProgress) -> LinkView | None:
        """Applies the step if the link is in a status it may follow; returns it, or None."""

    async def claim_in_flight(
        self, key: str, link_id: str, now: datetime, expires_at: datetime
    ) -> str: ...
    async def release_in_flight(self, link_id: str) -> None: ...
    async def find_idempotency_key(self, scope: str) -> IdempotencyRecord | None: ...
    async def remember_idempotency_key(
        self, scope: str, record: IdempotencyRecord
    ) -> IdempotencyRecord: ...


class MongoLinkStore:
    """LinkStore on MongoDB; one document per link, per in-flight claim, per idempotency key."""

    def __init__(self, client: AsyncMongoClient[dict[str, Any]], database: str) -> None:
        db: AsyncDatabase[dict[str, Any]] = client[database]
        self._links = db["links"]
        self._in_flight = db["in_flight"]
        self._idempotency = db["idempotency_keys"]

    async def create_indexes(self) -> None:
        """Creates the indexes the queries rely on (idempotent)."""
        await self._in_flight.create_index("link_id")

    async def insert_link(self, link: LinkView) -> None:
        await self._links.insert_one(_to_document(link))

    async def delete_link(self, link_id: str) -> None:
        await self._links.delete_one({"_id": link_id})

    async def get_link(self, link_id: str) -> LinkView | None:
        document = await self._links.find_one({"_id": link_id})
        return _from_document(document) if document else None

    async def advance_link(self, link_id: str, progress: LinkProgress) -> LinkView | None:
        # Top-level fields, not a sub-document: FerretDB is slow with nested documents.
        changes = progress.changes()
        changes["status"] = progress.status.value
        if progress.failure is not None:
            changes["failure"] = progress.failure.model_dump(mode="json")
        # The status filter makes the move conditional, so a late or repeated event is a no-op.
        allowed = [s.value for s in progress.allowed_from]
        document = await self._links.find_one_and_update(
            {"_id": link_id, "status": {"$in": allowed}},
            {"$set": changes},
            return_document=ReturnDocument.AFTER,
        )
        return _from_document(document) if document else None

    async def claim_in_flight(
        self, key: str, link_id: str, now: datetime, expires_at: datetime
    ) -> str:
        try:
            await self._in_flight.insert_one(
                {"_id": key, "link_id": link_id, "expires_at": expires_at}
            )
        except DuplicateKeyError:
            holder = await self._in_flight.find_one({"_id": key})
            if holder is None or holder["expires_at"] <= now:
                # Released meanwhile, or held by a request that never got an answer: take over.
                await self._in_flight.delete_one({"_id": key, "link_id": _link_of(holder)})
                return await self.claim_in_flight(key, link_id, now, expires_at)
            return str(holder["link_id"])
        return link_id

    async def release_in_flight(self, link_id: str) -> None:
        await self._in_flight.delete_many({"link_id": link_id})

    async def find_idempotency_key(self, scope: str) -> IdempotencyRecord | None:
        document = await self._idempotency.find_one({"_id": scope})
        if document is None:
            return None
        return IdempotencyRecord(link_id=document["link_id"], fingerprint=document["fingerprint"])

    async def remember_idempotency_key(
        self, scope: str, record: IdempotencyRecord
    ) -> IdempotencyRecord:
        try:
            await self._idempotency.insert_one(
                {"_id": scope, "link_id": record.link_id, "fingerprint": record.fingerprint}
            )
        except DuplicateKeyError:
            existing = await self.find_idempotency_key(scope)
            return existing or record
        return record


def _link_of(claim: dict[str, Any] | None) -> str | None:
    return str(claim["link_id"]) if claim else None


def _to_document(link: LinkView) -> dict[str, Any]:
    return {
        "_id": link.link_id,
        "owner": link.owner.model_dump(),
        "address": link.address,
        "provider": link.provider.value,
        "status": link.status.value,
        "created_at": link.created_at,
        "updated_at": link.updated_at,
        "failure": link.failure.model_dump(mode="json") if link.failure else None,
        "mailbox_id": link.mailbox_id,
        "already_linked": link.already_linked,
        "auth": link.auth.value,
        "authorize_url": link.authorize_url,
        "authorization_expires_at": link.authorization_expires_at,
    }


def _from_document(document: dict[str, Any]) -> LinkView:
    failure = document.get("failure")
    return LinkView(
        link_id=document["_id"],
        owner=MailboxOwner.model_validate(document["owner"]),
        address=document["address"],
        provider=ProviderType(document["provider"]),
        status=LinkStatus(document["status"]),
        created_at=document["created_at"],
        updated_at=document["updated_at"],
        failure=Failure.model_validate(failure) if failure else None,
        mailbox_id=document.get("mailbox_id"),
        already_linked=bool(document.get("already_linked", False)),
        # Links stored before OAuth existed were all password links.
        auth=AuthMethod(document.get("auth", AuthMethod.PASSWORD)),
        authorize_url=document.get("authorize_url"),
        authorization_expires_at=document.get("authorization_expires_at"),
    )
