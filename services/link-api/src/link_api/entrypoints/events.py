"""Kafka subscriber of link-api: keeps each link's status in step with the result events."""

from typing import TypeAlias

from faststream.kafka import KafkaBroker

from link_api import handlers
from link_api.config import SERVICE_NAME
from link_api.handlers import LinkApiDeps
from mailbox_link_shared.events import (
    AuthorizationEvent,
    AuthorizationRequired,
    LinkRejected,
    LinkReserved,
    MailboxEvent,
    MailboxLinked,
    MailboxVerified,
    VerificationResult,
)
from mailbox_link_shared.kafka import subscribe
from mailbox_link_shared.settings import ServiceSettings
from mailbox_link_shared.topics import Topics

# Everything on the topics link-api reads: verifications, mailboxes and authorizations.
LinkApiInput: TypeAlias = VerificationResult | MailboxEvent | AuthorizationEvent


def register_subscribers(
    broker: KafkaBroker, settings: ServiceSettings, topics: Topics, deps: LinkApiDeps
) -> None:
    """Subscribes link-api to the verifiers', the registry's and the OAuth broker's results."""

    async def on_result(event: LinkApiInput) -> None:
        await route_event(event, deps)

    results = (topics.verifications, topics.mailboxes, topics.authorizations)
    subscribe(broker, settings, SERVICE_NAME, results, LinkApiInput, on_result)


async def route_event(event: LinkApiInput, deps: LinkApiDeps) -> None:
    """Hands one consumed event to the handler that moves its link's status.

    VerificationFailed, MailboxUnlinked and MailboxReconnectRequired move no link: the
    registry answers a failed verification with LinkRejected, and the other two are about
    mailboxes, which the registry keeps.
    """
    if isinstance(event, MailboxVerified):
        await handlers.when_mailbox_verified_update_status(event, deps)
    elif isinstance(event, LinkReserved | MailboxLinked | LinkRejected):
        await handlers.when_registry_answer_update_status(event, deps)
    elif isinstance(event, AuthorizationRequired):
        await handlers.when_authorization_required_show_url(event, deps)
