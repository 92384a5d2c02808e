"""The one way services open MongoDB: lazily, timezone-aware, from their settings."""

from typing import Any

from pymongo import AsyncMongoClient

from mailbox_link_shared.settings import MongoSettings

SERVER_SELECTION_TIMEOUT_MS = 5000


def make_mongo_client(settings: MongoSettings) -> AsyncMongoClient[dict[str, Any]]:
    """Returns a client that connects on first use, so nothing opens at import or wiring."""
    return AsyncMongoClient(
        settings.mongodb_uri.get_secret_value(),
        tz_aware=True,
        connect=False,
        # Fail a request in seconds when MongoDB is away, instead of pymongo's 30 s.
        serverSelectionTimeoutMS=SERVER_SELECTION_TIMEOUT_MS,
        maxPoolSize=settings.mongodb_max_pool_size,
    )
