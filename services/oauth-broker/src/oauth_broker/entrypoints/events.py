"""Kafka subscriber of oauth-broker: the topics the catalogue names, routed by EVENT_HANDLERS."""

from faststream.kafka import KafkaBroker

from mailbox_link_shared.kafka import EventConsumer, subscribe
from mailbox_link_shared.routing import EventRouter
from mailbox_link_shared.settings import ServiceSettings
from oauth_broker.config import SERVICE_NAME
from oauth_broker.handlers import EVENT_HANDLERS, BrokerDeps


def register_subscribers(
    broker: KafkaBroker, settings: ServiceSettings, deps: BrokerDeps
) -> EventConsumer:
    """Returns oauth-broker's consumer of its topics, each event to its handler (start it after the
    broker, stop it before)."""
    return subscribe(broker, settings, SERVICE_NAME, EventRouter(EVENT_HANDLERS, deps))
