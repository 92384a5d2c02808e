"""The one place that wires the registry together: settings in, a runnable ASGI app out."""

from typing import Any

from fastapi import FastAPI
from pymongo import AsyncMongoClient

from mailbox_link_shared.http import build_http_app
from mailbox_link_shared.kafka import (
    KafkaEventPublisher,
    ensure_topics,
    make_broker,
    subscriber_options,
)
from mailbox_link_shared.topics import Topics
from registry.adapters.mailbox_store import MongoMailboxStore
from registry.config import SERVICE_NAME, Settings
from registry.domain.plans import PlanTable
from registry.entrypoints.events import register_subscribers
from registry.entrypoints.http import build_router
from registry.handlers import RegistryDeps


def build_app(settings: Settings) -> FastAPI:
    """Returns the registry application; connections open when it starts, not here."""
    topics = Topics.for_namespace(settings.namespace)
    broker = make_broker(settings, SERVICE_NAME)
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        settings.mongodb_uri.get_secret_value(), tz_aware=True, connect=False
    )
    store = MongoMailboxStore(mongo, f"{settings.namespace}-registry")
    deps = RegistryDeps(
        store=store,
        publisher=KafkaEventPublisher(broker, topics),
        plans=PlanTable(settings.plans, settings.default_plan),
    )
    register_subscribers(broker, topics, deps, subscriber_options(settings, SERVICE_NAME))

    async def create_topics() -> None:
        await ensure_topics(settings)

    return build_http_app(
        title="mailbox-link registry",
        router=build_router(deps),
        service_keys=settings.service_keys,
        on_start=[store.create_indexes, create_topics, broker.start],
        on_stop=[broker.stop, mongo.close],
    )
