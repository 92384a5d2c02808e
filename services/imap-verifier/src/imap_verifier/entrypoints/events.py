"""Kafka subscriber of imap-verifier: the topics the catalogue names, routed by EVENT_HANDLERS."""

from faststream.kafka import KafkaBroker

from imap_verifier.config import SERVICE_NAME
from imap_verifier.handlers import EVENT_HANDLERS
from imap_verifier.ports import VerifierDeps
from mailbox_link_shared.kafka import subscribe
from mailbox_link_shared.routing import EventRouter
from mailbox_link_shared.settings import ServiceSettings


def register_subscribers(
    broker: KafkaBroker, settings: ServiceSettings, deps: VerifierDeps
) -> None:
    """Subscribes imap-verifier to its topics, each event to its handler."""
    subscribe(broker, settings, SERVICE_NAME, EventRouter(EVENT_HANDLERS, deps))
