"""Kafka subscriber of the registry: link requests, verification results and plan changes."""

from faststream.kafka import KafkaBroker

from mailbox_link_shared.events import (
    LinkRequested,
    MailboxVerified,
    RegistryInput,
    UserPlanChanged,
    VerificationFailed,
)
from mailbox_link_shared.kafka import subscribe
from mailbox_link_shared.settings import ServiceSettings
from mailbox_link_shared.topics import Topics
from registry import handlers
from registry.config import SERVICE_NAME
from registry.handlers import RegistryDeps


def register_subscribers(
    broker: KafkaBroker, settings: ServiceSettings, topics: Topics, deps: RegistryDeps
) -> None:
    """Subscribes the registry to its three input topics."""

    async def on_event(event: RegistryInput) -> None:
        if isinstance(event, LinkRequested):
            await handlers.when_link_requested_reserve(event, deps)
        elif isinstance(event, MailboxVerified):
            await handlers.when_mailbox_verified_link(event, deps)
        elif isinstance(event, VerificationFailed):
            await handlers.when_verification_failed_release(event, deps)
        elif isinstance(event, UserPlanChanged):
            await handlers.when_user_plan_changed_apply(event, deps)

    inputs = (topics.link_requests, topics.verifications, topics.user_plans)
    subscribe(broker, settings, SERVICE_NAME, inputs, RegistryInput, on_event)
