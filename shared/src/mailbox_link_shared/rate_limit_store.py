"""MongoDB storage of rate-limit slots (mailbox_link_shared.rate_limits), shared by link-api
and the imap-verifier so limits hold across replicas and services (docs/adr/0015).

One collection, `rate_limit_slots`, of `{_id: <hashed key>/<window>/<i>, at, expires_at}`. Every
read is by `_id` alone (answered from the index on any MongoDB-protocol store) and every write
is a unique insert (atomic even where concurrent updates are not, as on FerretDB). Slots expire
by a TTL index on `expires_at`, or by the sweep on stores without TTL indexes.
"""

import logging
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, AsyncMongoClient
from pymongo.errors import DuplicateKeyError, OperationFailure

from mailbox_link_contract.events import utc_now
from mailbox_link_shared.timer import PeriodicTask

logger = logging.getLogger(__name__)

COLLECTION = "rate_limit_slots"


def rate_limit_database(namespace: str) -> str:
    """The database both services keep their common limits in."""
    return f"{namespace}-rate-limits"


class MongoSlots:
    """The SlotStore on MongoDB."""

    def __init__(self, client: AsyncMongoClient[dict[str, Any]], database: str) -> None:
        self._slots = client[database][COLLECTION]

    async def create_indexes(self) -> None:
        """Creates the expiry index (idempotent); stores without TTL indexes rely on the sweep."""
        try:
            await self._slots.create_index([("expires_at", ASCENDING)], expireAfterSeconds=0)
        except OperationFailure as exc:
            logger.warning("no expiry index on %s: %s", COLLECTION, exc.code)

    async def add(self, slot_id: str, at: datetime, expires_at: datetime) -> bool:
        """Inserts the slot; False if it exists (another attempt took it)."""
        try:
            await self._slots.insert_one({"_id": slot_id, "at": at, "expires_at": expires_at})
        except DuplicateKeyError:
            return False
        return True

    async def taken_at(self, slot_id: str) -> datetime | None:
        """Returns when the slot was taken, or None if it is free."""
        slot = await self._slots.find_one({"_id": slot_id}, {"at": 1})
        return None if slot is None else slot["at"]

    async def delete_expired(self, now: datetime) -> int:
        """Deletes slots past their window (what a TTL index would); returns how many."""
        result = await self._slots.delete_many({"expires_at": {"$lt": now}})
        return result.deleted_count


def make_slot_sweep(slots: MongoSlots, interval: float) -> PeriodicTask:
    """Returns the timer that deletes expired slots; harmless beside a TTL index."""

    async def sweep_round() -> None:
        deleted = await slots.delete_expired(utc_now())
        if deleted:
            logger.info("rate limits: deleted %d expired slots", deleted)

    return PeriodicTask("rate-limit-sweep", interval, sweep_round)
