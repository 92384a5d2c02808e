"""Kafka subscriber of registry: the topics the catalogue names, routed by EVENT_HANDLERS."""

from faststream.kafka import KafkaBroker

from mailbox_link_shared.kafka import EventConsumer, subscribe
from mailbox_link_shared.routing import EventRouter
from mailbox_link_shared.settings import ServiceSettings
from registry.config import SERVICE_NAME
from registry.handlers import EVENT_HANDLERS, RegistryDeps


def register_subscribers(
    broker: KafkaBroker, settings: ServiceSettings, deps: RegistryDeps
) -> EventConsumer:
    """Returns registry's consumer of its topics, each event to its handler (start it after the
    broker, stop it before)."""
    return subscribe(broker, settings, SERVICE_NAME, EventRouter(EVENT_HANDLERS, deps))
