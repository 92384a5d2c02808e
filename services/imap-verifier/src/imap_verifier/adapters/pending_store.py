"""MongoDB storage of the verifier: password link requests waiting for their reservation.

A request and its reservation come on two topics in no order, and may be handled at the same
moment by two replicas. As in the OAuth broker (and docs/adr/0013), each is its own document
inserted once, and the decision to log in is a unique insert of the link's start marker:
MongoDB-protocol stores that do not isolate concurrent updates of one document (FerretDB)
still let exactly one insert of an `_id` win. Requests keep their credentials sealed, as the
event carried them; every document expires (TTL index on `expires_at`, or the verifier's
sweep on stores without TTL indexes, such as FerretDB).
"""

import contextlib
import logging
from datetime import datetime, timedelta
from typing import Any

from pymongo import ASCENDING, AsyncMongoClient
from pymongo.errors import DuplicateKeyError, OperationFailure

from imap_verifier.domain.pending import StartReason

logger = logging.getLogger(__name__)

# Longer than any redelivery: a start marker must outlive the request's retention on Kafka
# (7 days), or a replayed request and reservation could start a second login.
START_MARKER_LIFETIME = timedelta(days=8)


class MongoPendingStore:
    """Collections `pending_verifications`, `reservations` and `verification_starts`, by link id."""

    def __init__(
        self, client: AsyncMongoClient[dict[str, Any]], database: str, lifetime: timedelta
    ) -> None:
        db = client[database]
        self._requests = db["pending_verifications"]
        self._reservations = db["reservations"]
        self._starts = db["verification_starts"]
        self._lifetime = lifetime

    async def create_indexes(self) -> None:
        """Creates the expiry indexes (idempotent)."""
        for collection in (self._requests, self._reservations, self._starts):
            try:
                await collection.create_index([("expires_at", ASCENDING)], expireAfterSeconds=0)
            except OperationFailure as exc:
                # A store without TTL support keeps working; documents then stay until removed.
                logger.warning("no expiry index on %s: %s", collection.name, exc.code)

    async def save_request(self, link_id: str, event_json: str, now: datetime) -> None:
        """Keeps a password link request (its credentials still sealed) until it is started."""
        document = {"_id": link_id, "event": event_json, "expires_at": now + self._lifetime}
        with contextlib.suppress(DuplicateKeyError):  # redelivered: the first copy stands
            await self._requests.insert_one(document)

    async def save_reservation(self, link_id: str, reserved_until: datetime, now: datetime) -> None:
        """Records until when the registry holds the link, even before its request came."""
        document = {
            "_id": link_id,
            "reserved_until": reserved_until,
            "expires_at": max(reserved_until, now) + self._lifetime,
        }
        with contextlib.suppress(DuplicateKeyError):  # the registry reserves a link once
            await self._reservations.insert_one(document)

    async def ready_request(self, link_id: str, now: datetime) -> str | None:
        """Returns the stored request if its reservation is in and still holds, else None."""
        request = await self._requests.find_one({"_id": link_id})
        if request is None:
            return None
        reservation = await self._reservations.find_one({"_id": link_id})
        if reservation is None or reservation["reserved_until"] <= now:
            return None
        return str(request["event"])

    async def claim_start(self, link_id: str, reason: StartReason, now: datetime) -> bool:
        """Writes the link's one start marker; False if a replica (or a rejection) did first."""
        try:
            await self._starts.insert_one(
                {
                    "_id": link_id,
                    "reason": reason.value,
                    "at": now,
                    "expires_at": now + START_MARKER_LIFETIME,
                }
            )
        except DuplicateKeyError:
            return False
        return True

    async def discard(self, link_id: str) -> None:
        """Deletes the link's request and reservation (answered, rejected or lapsed)."""
        await self._requests.delete_one({"_id": link_id})
        await self._reservations.delete_one({"_id": link_id})

    async def delete_expired(self, now: datetime) -> dict[str, int]:
        """Deletes what is past its `expires_at` (what a TTL index would); counts by collection."""
        deleted: dict[str, int] = {}
        for collection in (self._requests, self._reservations, self._starts):
            result = await collection.delete_many({"expires_at": {"$lt": now}})
            deleted[collection.name] = result.deleted_count
        return deleted
