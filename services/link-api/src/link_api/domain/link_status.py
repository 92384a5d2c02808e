"""The status of a link as the caller sees it, and the rules for moving it forward."""

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from mailbox_link_contract.events import AuthMethod, Failure, MailboxOwner, ProviderType


class LinkStatus(StrEnum):
    """Where a link stands: pending -> reserved -> authorization_required (OAuth links only)
    -> verified -> linked, or failed at any point.

    Only the registry's answer (MailboxLinked, MailboxReconnected or LinkRejected) ends a link,
    so every link has one final status, the same one the registry recorded.
    """

    PENDING = "pending"
    RESERVED = "reserved"  # the registry holds the address and a plan slot for it
    AUTHORIZATION_REQUIRED = "authorization_required"  # the user must sign in at the provider
    VERIFIED = "verified"
    LINKED = "linked"
    FAILED = "failed"


TERMINAL = frozenset({LinkStatus.LINKED, LinkStatus.FAILED})

# Events arrive on different topics, so 'linked' may overtake 'verified', and 'verified' the
# sign-in URL: a link only moves up these ranks. A link shows the highest step recorded for it;
# both ends share the top rank, and the first answer recorded there is the one that stands.
RANK: dict[LinkStatus, int] = {
    LinkStatus.PENDING: 0,
    LinkStatus.RESERVED: 1,
    LinkStatus.AUTHORIZATION_REQUIRED: 2,
    LinkStatus.VERIFIED: 3,
    LinkStatus.LINKED: 4,
    LinkStatus.FAILED: 4,
}
FINAL_RANK = 4


def statuses_that_may_become(status: LinkStatus) -> frozenset[LinkStatus]:
    """Returns the statuses from which a link may move to the given one (those ranked lower)."""
    return frozenset(s for s, rank in RANK.items() if rank < RANK[status])


@dataclass(frozen=True)
class LinkView:
    """The link as the API shows it."""

    link_id: str
    owner: MailboxOwner
    address: str
    provider: ProviderType
    status: LinkStatus
    created_at: datetime
    updated_at: datetime
    failure: Failure | None = None
    mailbox_id: str | None = None
    already_linked: bool = False  # linked before this request: nothing new was linked
    reconnected: bool = False  # this request reconnected the user's mailbox (same mailbox_id)
    auth: AuthMethod = AuthMethod.PASSWORD
    # Where the user signs in, and until when; set only while authorization is required.
    authorize_url: str | None = None
    authorization_expires_at: datetime | None = None


@dataclass(frozen=True)
class LinkProgress:
    """One step forward of a link, with what the event that caused it tells."""

    status: LinkStatus
    at: datetime
    failure: Failure | None = None
    mailbox_id: str | None = None
    already_linked: bool = False
    reconnected: bool = False
    authorize_url: str | None = None
    authorization_expires_at: datetime | None = None
    # The event that brought the step (its event_id), so a redelivery of it is told from
    # another event of the same rank; a step made without an event gets an id of its own.
    event_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def rank(self) -> int:
        """Where the step stands in the order a link moves through (RANK)."""
        return RANK[self.status]

    @property
    def allowed_from(self) -> frozenset[LinkStatus]:
        """The statuses the link may be in for this step to apply."""
        return statuses_that_may_become(self.status)

    def changes(self) -> dict[str, Any]:
        """Returns the LinkView fields this step sets: all of them, so what a link shows
        depends only on its highest step. The sign-in URL is kept only while authorization is
        required; the failure, the mailbox and `already_linked` come only with an end."""
        return {
            "status": self.status,
            "updated_at": self.at,
            "authorize_url": self.authorize_url,
            "authorization_expires_at": self.authorization_expires_at,
            "already_linked": self.already_linked,
            "reconnected": self.reconnected,
            "failure": self.failure,
            "mailbox_id": self.mailbox_id,
        }
