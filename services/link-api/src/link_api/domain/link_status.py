"""The status of a link as the caller sees it, and the rules for moving it forward."""

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from mailbox_link_contract.events import AuthMethod, Failure, MailboxOwner, ProviderType


class LinkStatus(StrEnum):
    """Where a link stands: pending -> reserved -> authorization_required (OAuth links only)
    -> verified -> linked, or failed at any point.

    Only the registry's answer (MailboxLinked or LinkRejected) ends a link, so every link has
    one final status, the same one the registry recorded.
    """

    PENDING = "pending"
    RESERVED = "reserved"  # the registry holds the address and a plan slot for it
    AUTHORIZATION_REQUIRED = "authorization_required"  # the user must sign in at the provider
    VERIFIED = "verified"
    LINKED = "linked"
    FAILED = "failed"


TERMINAL = frozenset({LinkStatus.LINKED, LinkStatus.FAILED})

# Events arrive on different topics, so 'linked' may overtake 'verified', and 'verified' the
# sign-in URL: only move forward.
_WAITING = frozenset({LinkStatus.PENDING, LinkStatus.RESERVED})
_OPEN = _WAITING | {LinkStatus.AUTHORIZATION_REQUIRED, LinkStatus.VERIFIED}
_MAY_FOLLOW: dict[LinkStatus, frozenset[LinkStatus]] = {
    LinkStatus.RESERVED: frozenset({LinkStatus.PENDING}),
    LinkStatus.AUTHORIZATION_REQUIRED: _WAITING,
    LinkStatus.VERIFIED: _WAITING | {LinkStatus.AUTHORIZATION_REQUIRED},
    LinkStatus.LINKED: _OPEN,
    LinkStatus.FAILED: _OPEN,
}


def statuses_that_may_become(status: LinkStatus) -> frozenset[LinkStatus]:
    """Returns the statuses from which a link may move to the given one."""
    return _MAY_FOLLOW.get(status, frozenset())


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
    authorize_url: str | None = None
    authorization_expires_at: datetime | None = None

    @property
    def allowed_from(self) -> frozenset[LinkStatus]:
        """The statuses the link may be in for this step to apply."""
        return statuses_that_may_become(self.status)

    def changes(self) -> dict[str, Any]:
        """Returns the LinkView fields this step sets. The sign-in URL is always set (None
        clears it), so it is only ever kept while authorization is required."""
        changes: dict[str, Any] = {
            "status": self.status,
            "updated_at": self.at,
            "authorize_url": self.authorize_url,
            "authorization_expires_at": self.authorization_expires_at,
        }
        if self.already_linked:
            changes["already_linked"] = True
        if self.failure is not None:
            changes["failure"] = self.failure
        if self.mailbox_id is not None:
            changes["mailbox_id"] = self.mailbox_id
        return changes
