"""Wires the mailbox access endpoint (docs/adr/0023) into the registry: its broker client,
audit store, rate limiter and sweep; bootstrap calls `build_access` once."""

import logging
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import APIRouter
from pymongo import AsyncMongoClient

from mailbox_link_shared.crypto import SecretBox
from mailbox_link_shared.http import CallerKeys, Hook
from mailbox_link_shared.rate_limit_store import MongoSlots, rate_limit_database
from mailbox_link_shared.rate_limits import RateLimiter
from mailbox_link_shared.timer import PeriodicTask
from registry.access_config import AccessSettings
from registry.adapters.access_audit import MongoAccessAudit
from registry.adapters.broker_client import HttpTokenBroker
from registry.entrypoints.access_http import build_access_router
from registry.mailbox_access import AccessDeps, forget_old_entries
from registry.ports import RegistryDeps

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AccessParts:
    """The access endpoint's router and its start and stop hooks."""

    router: APIRouter
    start: tuple[Hook, ...]
    stop: tuple[Hook, ...]


def build_access(
    settings: AccessSettings,
    secret_box: SecretBox,
    registry: RegistryDeps,
    mongo: AsyncMongoClient[dict[str, Any]],
    database: str,
    namespace: str,
    keys: CallerKeys,
) -> AccessParts:
    """Returns the access route and its hooks; nothing connects until started."""
    broker_http = httpx.AsyncClient(
        base_url=settings.broker_url,
        headers={"Authorization": f"Bearer {settings.broker_token.get_secret_value()}"},
        timeout=httpx.Timeout(settings.broker_timeout_seconds),
    )
    audit = MongoAccessAudit(mongo, database)
    # The limits' store link-api and the imap-verifier share: one place for every budget.
    slots = MongoSlots(mongo, rate_limit_database(namespace))
    deps = AccessDeps(
        registry=registry,
        secret_box=secret_box,
        broker=HttpTokenBroker(broker_http),
        audit=audit,
        limiter=RateLimiter(slots),
        per_key=settings.access_limit(),
        default_min_valid_seconds=settings.access_token_min_valid_seconds,
        audit_retention=settings.access_audit_retention,
        clock=registry.clock,
    )

    async def sweep_round() -> None:
        forgotten = await forget_old_entries(deps)
        expired = await slots.delete_expired(registry.clock())
        if forgotten or expired:
            logger.info("access: forgot %d audit entries, %d spent slots", forgotten, expired)

    sweeper = PeriodicTask("registry-access-sweep", settings.access_sweep_interval_seconds,
                           sweep_round)  # fmt: skip
    return AccessParts(
        router=build_access_router(deps, keys),
        start=(audit.create_indexes, slots.create_indexes, sweeper.start),
        stop=(sweeper.stop, broker_http.aclose),
    )
