"""Kafka subscriber of imap-verifier: the topics the catalogue names, routed by EVENT_HANDLERS."""

from faststream.kafka import KafkaBroker

from imap_verifier.config import SERVICE_NAME
from imap_verifier.handlers import EVENT_HANDLERS
from imap_verifier.ports import VerifierDeps
from mailbox_link_shared.kafka import EventConsumer, subscribe
from mailbox_link_shared.routing import EventRouter
from mailbox_link_shared.settings import ServiceSettings


def register_subscribers(
    broker: KafkaBroker, settings: ServiceSettings, deps: VerifierDeps
) -> EventConsumer:
    """Returns imap-verifier's consumer of its topics, each event to its handler (start it after the
    broker, stop it before)."""
    return subscribe(broker, settings, SERVICE_NAME, EventRouter(EVENT_HANDLERS, deps))
