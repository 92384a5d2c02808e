"""MongoDB storage of the access endpoint's audit trail (docs/adr/0023): one document per ask,
`access_audit` in the registry's database: who (the caller key's name), which mailbox, its
auth, the outcome, when. Never a secret. Kept MBL_ACCESS_AUDIT_RETENTION_DAYS, deleted by a
sweep (the store under test, FerretDB, has no TTL indexes)."""

from datetime import datetime
from typing import Any

from pymongo import ASCENDING, AsyncMongoClient

from registry.mailbox_access import AccessEntry

Document = dict[str, Any]
COLLECTION = "access_audit"


class MongoAccessAudit:
    """The AccessAudit on MongoDB."""

    def __init__(self, client: AsyncMongoClient[Document], database: str) -> None:
        self._entries = client[database][COLLECTION]

    async def create_indexes(self) -> None:
        """The retention sweep's index (idempotent)."""
        await self._entries.create_index([("at", ASCENDING)], name="at")

    async def record(self, entry: AccessEntry) -> None:
        """Stores one entry (its id the store's own: two asks are two entries)."""
        await self._entries.insert_one(
            {
                "key": entry.key,
                "account_id": entry.account_id,
                "mailbox_id": entry.mailbox_id,
                "auth": entry.auth,
                "outcome": entry.outcome.value,
                "at": entry.at,
            }
        )

    async def forget_before(self, cutoff: datetime) -> int:
        """Deletes entries older than `cutoff`; returns how many."""
        result = await self._entries.delete_many({"at": {"$lt": cutoff}})
        return result.deleted_count
