"""Kafka subscriber of link-api: the topics the catalogue names, routed by EVENT_HANDLERS."""

from faststream.kafka import KafkaBroker

from link_api.config import SERVICE_NAME
from link_api.handlers import EVENT_HANDLERS, LinkApiDeps
from mailbox_link_shared.kafka import EventConsumer, subscribe
from mailbox_link_shared.routing import EventRouter
from mailbox_link_shared.settings import ServiceSettings


def register_subscribers(
    broker: KafkaBroker, settings: ServiceSettings, deps: LinkApiDeps
) -> EventConsumer:
    """Returns link-api's consumer of its topics, each event to its handler (start it after the
    broker, stop it before)."""
    return subscribe(broker, settings, SERVICE_NAME, EventRouter(EVENT_HANDLERS, deps))
