"""Kafka subscriber of the registry: link requests, verification results, plan changes and
authorization news (a mailbox that must reconnect)."""

from faststream.kafka import KafkaBroker

from mailbox_link_shared.events import RegistryInput
from mailbox_link_shared.kafka import subscribe
from mailbox_link_shared.settings import ServiceSettings
from mailbox_link_shared.topics import Topics
from registry import handlers
from registry.config import SERVICE_NAME
from registry.handlers import RegistryDeps


def register_subscribers(
    broker: KafkaBroker, settings: ServiceSettings, topics: Topics, deps: RegistryDeps
) -> None:
    """Subscribes the registry to its four input topics."""

    async def on_event(event: RegistryInput) -> None:
        await handlers.handle_event(event, deps)

    inputs = (topics.link_requests, topics.verifications, topics.user_plans, topics.authorizations)
    subscribe(broker, settings, SERVICE_NAME, inputs, RegistryInput, on_event)
