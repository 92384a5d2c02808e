"""The events the registry publishes, built from a link's record: pure, no I/O."""

from mailbox_link_contract.events import (
    Failure,
    LinkRejected,
    LinkRejectedData,
    LinkReserved,
    LinkReservedData,
    MailboxHealth,
    MailboxHealthChanged,
    MailboxHealthChangedData,
    MailboxLinked,
    MailboxLinkedData,
    MailboxReconnected,
    MailboxReconnectedData,
    MailboxUnlinked,
    MailboxUnlinkedData,
    UnlinkedBy,
)
from mailbox_link_contract.topics import REGISTRY
from registry.domain.links import LinkRecord, MailboxDetails


def reserved_event(record: LinkRecord, mailbox_id: str | None = None) -> LinkReserved:
    """`mailbox_id`: the link reconnects the owner's mailbox with this id."""
    data = LinkReservedData(
        link_id=record.link_id,
        owner=record.owner,
        address=record.address,
        expires_at=record.expires_at,
        provider=record.provider,
        mailbox_id=mailbox_id,
    )
    return LinkReserved(correlation_id=record.link_id, producer=REGISTRY, data=data)


def rejected_event(
    record: LinkRecord,
    failure: Failure,
    plan_limit: int | None = None,
    mailbox_id: str | None = None,
) -> LinkRejected:
    data = LinkRejectedData(
        link_id=record.link_id,
        owner=record.owner,
        address=record.address,
        failure=failure,
        plan_limit=plan_limit,
        mailbox_id=mailbox_id,
    )
    return LinkRejected(correlation_id=record.link_id, producer=REGISTRY, data=data)


def linked_event(record: LinkRecord, mailbox: MailboxDetails) -> MailboxLinked:
    data = MailboxLinkedData(
        link_id=record.link_id,
        mailbox_id=mailbox.mailbox_id,
        owner=record.owner,
        address=record.address,
        provider=record.provider,
        oidc_provider=record.oidc_provider,
        linked_at=mailbox.linked_at,
    )
    return MailboxLinked(correlation_id=record.link_id, producer=REGISTRY, data=data)


def reconnected_event(
    record: LinkRecord, address: str, mailbox: MailboxDetails
) -> MailboxReconnected:
    """Ends a reconnect link: its mailbox (linked as `address`) works again, same id."""
    data = MailboxReconnectedData(
        link_id=record.link_id,
        mailbox_id=mailbox.mailbox_id,
        owner=record.owner,
        address=address,
        provider=record.provider,
        oidc_provider=record.oidc_provider,
    )
    return MailboxReconnected(correlation_id=record.link_id, producer=REGISTRY, data=data)


def unlinked_event(record: LinkRecord, by: UnlinkedBy) -> MailboxUnlinked:
    mailbox_id = record.mailbox.mailbox_id if record.mailbox else record.link_id
    data = MailboxUnlinkedData(
        mailbox_id=mailbox_id,
        owner=record.owner,
        address=record.address,
        link_id=record.link_id,
        unlinked_by=by,
    )
    return MailboxUnlinked(correlation_id=record.link_id, producer=REGISTRY, data=data)


def health_changed_event(
    record: LinkRecord,
    mailbox: MailboxDetails,
    previous: MailboxHealth,
    failure: Failure | None,
) -> MailboxHealthChanged:
    """The mailbox linked under `record` is now in `mailbox.health` (was `previous`)."""
    data = MailboxHealthChangedData(
        mailbox_id=mailbox.mailbox_id,
        link_id=record.link_id,
        owner=record.owner,
        address=record.address,
        provider=record.provider,
        oidc_provider=record.oidc_provider,
        health=mailbox.health,
        previous_health=previous,
        failure=None if mailbox.health is MailboxHealth.ACTIVE else failure,
    )
    return MailboxHealthChanged(correlation_id=record.link_id, producer=REGISTRY, data=data)
