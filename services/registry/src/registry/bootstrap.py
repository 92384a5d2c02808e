"""The one place that wires the registry together: settings in, a runnable ASGI app out."""

import functools

from fastapi import FastAPI

from mailbox_link_shared.http import build_http_app
from mailbox_link_shared.kafka import (
    KafkaEventPublisher,
    ensure_topics,
    make_broker,
    subscriber_options,
)
from mailbox_link_shared.mongo import make_mongo_client
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
    mongo = make_mongo_client(settings)
    store = MongoMailboxStore(mongo, f"{settings.namespace}-registry")
    deps = RegistryDeps(
        store=store,
        publisher=KafkaEventPublisher(broker, topics),
        plans=PlanTable(settings.plans, settings.default_plan),
    )
    register_subscribers(broker, topics, deps, subscriber_options(settings, SERVICE_NAME))

    return build_http_app(
        title="mailbox-link registry",
        router=build_router(deps),
        service_keys=settings.service_keys,
        on_start=[store.create_indexes, functools.partial(ensure_topics, settings), broker.start],
        on_stop=[broker.stop, mongo.close],
    )
