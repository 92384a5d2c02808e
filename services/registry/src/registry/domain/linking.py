"""The rule for a verified mailbox: link it, refresh it, or reject it, and why."""

from enum import StrEnum

from mailbox_link_shared.events import MailboxOwner


class LinkDecision(StrEnum):
    """What the registry does with a verified mailbox."""

    LINK = "link"
    REFRESH = "refresh"  # the same user links it again: keep the link, take the new settings
    ALREADY_LINKED_ELSEWHERE = "already_linked_elsewhere"
    PLAN_LIMIT_REACHED = "plan_limit_reached"


def decide_link(
    requester: MailboxOwner, current_owner: MailboxOwner | None, linked_count: int, limit: int
) -> LinkDecision:
    """Decides whether the requester may link the mailbox."""
    if current_owner == requester:
        return LinkDecision.REFRESH
    if current_owner is not None:
        return LinkDecision.ALREADY_LINKED_ELSEWHERE
    if linked_count >= limit:
        return LinkDecision.PLAN_LIMIT_REACHED
    return LinkDecision.LINK
