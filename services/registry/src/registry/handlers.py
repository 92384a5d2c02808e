"""One function per thing the registry does: link a verified mailbox, unlink, answer lookups."""

import logging
import uuid
from dataclasses import dataclass

from pydantic import TypeAdapter

from mailbox_link_shared.events import (
    Envelope,
    Failure,
    LinkRejected,
    LinkRejectedData,
    MailboxEvent,
    MailboxLinked,
    MailboxLinkedData,
    MailboxOwner,
    MailboxUnlinked,
    MailboxUnlinkedData,
    MailboxVerified,
    utc_now,
)
from mailbox_link_shared.failures import FailureCode
from mailbox_link_shared.publishing import EventPublisher
from registry.adapters.mailbox_store import AddressTaken, LinkedMailbox, MailboxStore
from registry.config import SERVICE_NAME
from registry.domain.linking import LinkDecision, decide_link
from registry.domain.plans import PlanTable

logger = logging.getLogger(__name__)
_MAILBOX_EVENT: TypeAdapter[MailboxEvent] = TypeAdapter(MailboxEvent)


@dataclass(frozen=True)
class RegistryDeps:
    """What the handlers work with; wired in bootstrap."""

    store: MailboxStore
    publisher: EventPublisher
    plans: PlanTable


async def when_mailbox_verified_link_mailbox(event: MailboxVerified, deps: RegistryDeps) -> None:
    """Links a verified mailbox to its requester, or rejects it; answers once per link."""
    data = event.data
    earlier = await deps.store.find_outcome(data.link_id)
    if earlier is not None:
        # A redelivery: repeat the decision already taken, with the same event id.
        await deps.publisher.publish(_MAILBOX_EVENT.validate_python(earlier))
        return
    outcome = await _link_or_reject(event, deps)
    await deps.store.save_outcome(data.link_id, outcome.model_dump(mode="json"))
    await deps.publisher.publish(outcome)
    logger.info("link %s of %s: %s", data.link_id, data.address, outcome.type)


async def _link_or_reject(event: MailboxVerified, deps: RegistryDeps) -> Envelope:
    data = event.data
    current = await deps.store.find_by_address(data.address)
    limit = deps.plans.limit_for(await deps.store.get_plan(data.owner))
    count = await deps.store.count_for_owner(data.owner)
    decision = decide_link(data.owner, current.owner if current else None, count, limit)
    mailbox = _mailbox_from(event, mailbox_id=current.mailbox_id if current else uuid.uuid4().hex)
    if decision is LinkDecision.LINK:
        try:
            await deps.store.insert(mailbox)
        except AddressTaken:
            # Another request linked it between our read and our write; the index decided.
            return _rejected(event, FailureCode.ALREADY_LINKED_ELSEWHERE)
    elif decision is LinkDecision.REFRESH:
        mailbox = await deps.store.refresh(mailbox)
    elif decision is LinkDecision.ALREADY_LINKED_ELSEWHERE:
        return _rejected(event, FailureCode.ALREADY_LINKED_ELSEWHERE)
    else:
        return _rejected(event, FailureCode.PLAN_LIMIT_REACHED, plan_limit=limit)
    return _linked(event, mailbox)


async def unlink_mailbox(owner: MailboxOwner, address: str, deps: RegistryDeps) -> bool:
    """Unlinks the user's mailbox and announces it; returns False if they have no such mailbox."""
    mailbox = await deps.store.delete(owner, address)
    if mailbox is None:
        return False
    data = MailboxUnlinkedData(mailbox_id=mailbox.mailbox_id, owner=owner, address=address)
    await deps.publisher.publish(
        MailboxUnlinked(correlation_id=mailbox.link_id, producer=SERVICE_NAME, data=data)
    )
    logger.info("mailbox %s unlinked", mailbox.mailbox_id)
    return True


async def list_mailboxes(owner: MailboxOwner, deps: RegistryDeps) -> list[LinkedMailbox]:
    """Returns the user's linked mailboxes, oldest first."""
    return await deps.store.list_for_owner(owner)


async def find_owner(address: str, deps: RegistryDeps) -> LinkedMailbox | None:
    """Returns the mailbox linked at this address, so a sign-in service can find its user."""
    return await deps.store.find_by_address(address)


async def assign_plan(owner: MailboxOwner, plan: str, deps: RegistryDeps) -> int:
    """Puts the user on a plan and returns its mailbox limit."""
    await deps.store.set_plan(owner, plan)
    return deps.plans.limit_for(plan)


def _mailbox_from(event: MailboxVerified, mailbox_id: str) -> LinkedMailbox:
    data = event.data
    return LinkedMailbox(
        mailbox_id=mailbox_id,
        address=data.address,
        owner=data.owner,
        provider=data.provider,
        imap=data.imap,
        smtp=data.smtp,
        credentials=data.credentials,
        link_id=data.link_id,
        linked_at=utc_now(),
    )


def _linked(event: MailboxVerified, mailbox: LinkedMailbox) -> MailboxLinked:
    data = MailboxLinkedData(
        link_id=event.data.link_id,
        mailbox_id=mailbox.mailbox_id,
        owner=mailbox.owner,
        address=mailbox.address,
        provider=mailbox.provider,
    )
    return MailboxLinked(correlation_id=event.correlation_id, producer=SERVICE_NAME, data=data)


def _rejected(
    event: MailboxVerified, code: FailureCode, plan_limit: int | None = None
) -> LinkRejected:
    detail = f"plan allows {plan_limit} mailboxes" if plan_limit is not None else ""
    data = LinkRejectedData(
        link_id=event.data.link_id,
        owner=event.data.owner,
        address=event.data.address,
        failure=Failure.of(code, detail),
        plan_limit=plan_limit,
    )
    return LinkRejected(correlation_id=event.correlation_id, producer=SERVICE_NAME, data=data)
