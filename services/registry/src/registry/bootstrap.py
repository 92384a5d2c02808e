"""The one place that wires the registry together: settings in, a runnable ASGI app out."""

import functools

from fastapi import APIRouter, FastAPI

from mailbox_link_contract.topics import Topics
from mailbox_link_shared.health import Readiness, kafka_check, mongo_check, running_check
from mailbox_link_shared.http import CallerKeys, build_http_app
from mailbox_link_shared.kafka import KafkaEventPublisher, make_broker
from mailbox_link_shared.mongo import make_mongo_client
from mailbox_link_shared.rate_limit_store import MongoSlots, rate_limit_database
from mailbox_link_shared.rate_limits import RateLimiter
from mailbox_link_shared.topics import prepare_topics
from registry.access_wiring import build_access
from registry.adapters.registry_store import MongoRegistryStore
from registry.config import SERVICE_NAME, Settings
from registry.domain.plans import PlanTable
from registry.entrypoints.events import register_subscribers
from registry.entrypoints.housekeeping import (
    make_health_scheduler,
    make_housekeeper,
    make_retention_sweeper,
)
from registry.entrypoints.http import build_router
from registry.handlers import RegistryDeps


def build_app(settings: Settings) -> FastAPI:
    """Returns the registry application; connections open when it starts, not here."""
    topics = Topics.for_namespace(settings.namespace)
    broker = make_broker(settings, SERVICE_NAME)
    mongo = make_mongo_client(settings)
    store = MongoRegistryStore(mongo, f"{settings.namespace}-registry")
    deps = RegistryDeps(
        store=store,
        publisher=KafkaEventPublisher(broker, topics),
        plans=PlanTable(settings.plans, settings.default_plan),
        reservation_ttl=settings.reservation_ttl,
        # Mailbox health (issue 17): the schedule, and on-demand checks' budget in the limits'
        # store link-api and the imap-verifier share (link-api's sweep deletes expired slots).
        health=settings.health_policy(),
        check_limiter=RateLimiter(MongoSlots(mongo, rate_limit_database(settings.namespace))),
    )
    consumer = register_subscribers(broker, settings, deps)
    housekeeper = make_housekeeper(deps, settings.housekeeping_interval_seconds)
    sweeper = make_retention_sweeper(
        deps, settings.retention_interval_seconds, settings.link_retention
    )
    health_scheduler = make_health_scheduler(deps, settings.health_scheduler_interval_seconds)

    keys = CallerKeys(settings.caller_keys())
    router = APIRouter()
    router.include_router(build_router(deps, keys))
    # --- issue 17, access: the mailbox access endpoint (docs/adr/0023) ---
    database = f"{settings.namespace}-registry"
    access = build_access(
        settings, settings.secret_box(), deps, mongo, database, settings.namespace, keys
    )
    router.include_router(access.router)
    return build_http_app(
        title="mailbox-link registry",
        router=router,
        keys=keys,
        api_docs=settings.api_docs,
        readiness=Readiness(
            {
                "kafka": kafka_check(broker),
                "mongodb": mongo_check(mongo),
                "consumer": running_check(consumer),
            }
        ),
        on_start=[
            store.create_indexes,
            functools.partial(prepare_topics, settings),
            broker.start,
            consumer.start,
            housekeeper.start,
            sweeper.start,
            health_scheduler.start,
            *access.start,
        ],
        on_stop=[
            health_scheduler.stop,
            *access.stop,
            sweeper.stop,
            housekeeper.stop,
            consumer.stop,
            broker.stop,
            mongo.close,
        ],
    )
