"""The life of one link request in the registry, and the rules that decide each step.

A link request holds two things while it lives: its mailbox address (so no one else can link
it) and one plan slot of its user (so the user cannot exceed their plan). It takes both before
verification ends, keeps them while linked, and gives both back when it ends any other way.
"""

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from mailbox_link_contract.events import AuthMethod, MailboxOwner, ProviderType, ServerSettings
from mailbox_link_contract.failures import FailureCode
from mailbox_link_contract.values import EncryptedSecret
from mailbox_link_shared.addresses import mailbox_key


class LinkState(StrEnum):
    """Where a link request stands in the registry."""

    RESERVING = "reserving"  # taking its address and a plan slot
    RESERVED = "reserved"  # holds both, waiting for verification
    LINKED = "linked"  # verified and linked: holds both until unlinked
    REJECTED = "rejected"  # ended without a link: refused, failed verification or expired
    UNLINKED = "unlinked"  # was linked, then unlinked


IN_FLIGHT = frozenset({LinkState.RESERVING, LinkState.RESERVED})
# In these states a link may hold its address and slot; in the others it must give them back.
HOLDING = IN_FLIGHT | {LinkState.LINKED}


@dataclass(frozen=True)
class MailboxDetails:
    """What the product needs to use a linked mailbox; credentials stay sealed."""

    mailbox_id: str
    imap: ServerSettings
    smtp: ServerSettings
    # For OAuth mailboxes this is the grant as first verified; the OAuth broker keeps the
    # refreshed tokens. None once unlinked: the credentials are deleted with the link.
    credentials: EncryptedSecret | None
    linked_at: datetime
    auth: AuthMethod = AuthMethod.PASSWORD
    # Set when the provider stopped accepting the mailbox's authorization for good.
    reconnect_required: FailureCode | None = None


@dataclass(frozen=True)
class LinkRecord:
    """One link request as the registry keeps it; the only document that decides its fate.

    `outbox` is the event announcing the latest decision, published after the decision is
    stored (and again by housekeeping if a crash came in between).
    """

    link_id: str
    owner: MailboxOwner
    address: str
    provider: ProviderType
    state: LinkState
    expires_at: datetime
    mailbox: MailboxDetails | None = None
    outbox: dict[str, Any] | None = None

    @property
    def decision_id(self) -> str | None:
        """The event id announcing the latest decision, if any."""
        return str(self.outbox["event_id"]) if self.outbox else None

    @property
    def mailbox_key(self) -> str:
        """What the address lock is taken on: one key for every spelling of the mailbox."""
        return mailbox_key(self.address)

    def has_expired(self, now: datetime) -> bool:
        """True if the link is still in flight past its reservation's end."""
        return self.state in IN_FLIGHT and self.expires_at <= now


class HolderVerdict(StrEnum):
    """What the current holder of an address means for a link that wants it."""

    STALE = "stale"  # the holder has ended or expired: clear it and try again
    ALREADY_LINKED = "already_linked"
    LINK_IN_PROGRESS = "link_in_progress"
    ALREADY_LINKED_ELSEWHERE = "already_linked_elsewhere"


def judge_address_holder(
    requester: MailboxOwner, holder: LinkRecord | None, now: datetime
) -> HolderVerdict:
    """Decides whether a link may take an address another link holds, and if not, why."""
    if holder is None or is_stale(holder, now):
        return HolderVerdict.STALE
    if holder.owner != requester:
        # Checked before the plan: the answer must not depend on the requester's plan.
        return HolderVerdict.ALREADY_LINKED_ELSEWHERE
    if holder.state is LinkState.LINKED:
        return HolderVerdict.ALREADY_LINKED
    return HolderVerdict.LINK_IN_PROGRESS


def is_stale(holder: LinkRecord, now: datetime) -> bool:
    """True if a link that holds an address or a slot has ended or expired, so must let go."""
    return holder.state not in HOLDING or holder.has_expired(now)
