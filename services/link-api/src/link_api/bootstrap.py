"""The one place that wires link-api together: settings in, a runnable ASGI app out."""

import functools
from dataclasses import replace
from datetime import timedelta

import httpx
from fastapi import FastAPI

from link_api.adapters.autoconfig import AutoconfigFetcher
from link_api.adapters.detector import Detector
from link_api.adapters.dns_lookup import DnsLookup
from link_api.adapters.link_store import MongoLinkStore, Retention
from link_api.adapters.registry_client import HttpRegistry
from link_api.config import SERVICE_NAME, Settings
from link_api.domain.oidc import OidcCatalogue
from link_api.entrypoints.events import register_subscribers
from link_api.entrypoints.fault_points import pause_file_fault_point
from link_api.entrypoints.housekeeping import make_outbox_relay, make_retention_sweep
from link_api.entrypoints.http import build_router
from link_api.entrypoints.providers_http import build_providers_router
from link_api.handlers import LinkApiDeps
from link_api.link_budgets import LinkBudgets
from mailbox_link_contract.topics import Topics
from mailbox_link_shared.health import Readiness, kafka_check, mongo_check, running_check
from mailbox_link_shared.http import CallerKeys, build_http_app, scoped
from mailbox_link_shared.kafka import KafkaEventPublisher, make_broker
from mailbox_link_shared.mongo import make_mongo_client
from mailbox_link_shared.network_policy import parse_networks
from mailbox_link_shared.rate_limit_store import MongoSlots, make_slot_sweep, rate_limit_database
from mailbox_link_shared.rate_limits import RateLimiter
from mailbox_link_shared.scopes import Scope
from mailbox_link_shared.topics import prepare_topics


def build_app(settings: Settings) -> FastAPI:
    """Returns the link-api application; connections open when it starts, not here."""
    topics = Topics.for_namespace(settings.namespace)
    broker = make_broker(settings, SERVICE_NAME)
    mongo = make_mongo_client(settings)
    retention = Retention(
        settings.link_retention, settings.idempotency_key_retention, settings.retention_batch_size
    )
    store = MongoLinkStore(mongo, f"{settings.namespace}-link-api", retention)
    sweep = make_retention_sweep(store, settings.retention_interval_seconds)

    async def open_storage() -> None:
        # TTL indexes where the store has them; otherwise the sweep expires old records.
        if not await store.create_indexes():
            await sweep.start()

    # Kafka's answer is cached a second: a burst of POSTs asks Kafka once (health.py).
    readiness = Readiness({"kafka": kafka_check(broker), "mongodb": mongo_check(mongo)})
    deps = LinkApiDeps(
        store=store,
        publisher=KafkaEventPublisher(broker, topics),
        secret_box=settings.secret_box(),
        in_flight_expiry=timedelta(seconds=settings.in_flight_expiry_seconds),
        send_deadline=timedelta(seconds=settings.send_deadline_seconds),
        events_ready=functools.partial(readiness.check, "kafka"),
        publish_deadline_seconds=settings.publish_deadline_seconds,
    )
    fault_point = pause_file_fault_point(settings.test_pause_file)
    if fault_point is not None:
        deps = replace(deps, fault_point=fault_point)
    relay = make_outbox_relay(
        deps,
        settings.outbox_relay_interval_seconds,
        timedelta(seconds=settings.outbox_relay_grace_seconds),
        settings.outbox_relay_batch_size,
    )
    registry_http = httpx.AsyncClient(
        base_url=settings.registry_url,
        headers={"Authorization": f"Bearer {settings.registry_token.get_secret_value()}"},
        timeout=httpx.Timeout(5.0),
    )
    consumer = register_subscribers(broker, settings, deps)
    readiness.add("consumer", running_check(consumer))
    dns = DnsLookup(settings.dns_servers, settings.dns_timeout_seconds)
    autoconfig = AutoconfigFetcher(
        dns,
        parse_networks(settings.autoconfig_allowed_networks),
        settings.autoconfig_tls(),
        settings.autoconfig_timeout_seconds,
        settings.autoconfig_port,
    )
    detector = Detector(dns, autoconfig)
    # The limits' store is shared with the imap-verifier, which records the failures.
    slots = MongoSlots(mongo, rate_limit_database(settings.namespace))
    slot_sweep = make_slot_sweep(slots, settings.rate_limit_sweep_interval_seconds)
    budgets = LinkBudgets(
        RateLimiter(slots), settings.user_limit(), settings.account_limit(), settings.back_off()
    )
    oidc = OidcCatalogue.of(settings.oidc_providers)
    keys = CallerKeys(settings.caller_keys())
    # Every route here is the product's: links, mailboxes, the provider picker.
    router = scoped(
        keys.require(Scope.LINKS),
        build_router(
            deps, HttpRegistry(registry_http), detector, settings.allowed_ports(), budgets, oidc
        ),
        build_providers_router(detector, oidc),
    )

    return build_http_app(
        title="mailbox-link link-api",
        router=router,
        keys=keys,
        api_docs=settings.api_docs,
        readiness=readiness,
        # The relay publishes, so it starts once the broker has.
        on_start=[
            open_storage,
            slots.create_indexes,
            slot_sweep.start,
            functools.partial(prepare_topics, settings),
            broker.start,
            relay.start,
            consumer.start,
        ],
        on_stop=[
            relay.stop,
            sweep.stop,
            slot_sweep.stop,
            consumer.stop,
            broker.stop,
            registry_http.aclose,
            mongo.close,
        ],
    )
