"""The life of one link request in the registry, and the rules that decide each step.

A link request holds one plan slot of its user from its request on (so the user cannot exceed
their plan, counting links in flight) and its user's own hold on the mailbox (so the user has
one request for it at a time). Its mailbox address (so no one else can link it) it claims only
once verified: before control is proven a request reveals nothing about other accounts and
holds nothing against the address's owner. It keeps all three while linked and lets go by
ending: a claim counts only while its link is live, so ending a link gives everything back.

A link's life is a chain of decisions, numbered from 1. Each is stored once under (link id,
step): of two requests deciding from the same step, the store's unique key lets one win.
"""

from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

from mailbox_link_contract.events import (
    AuthMethod,
    Authority,
    MailboxHealth,
    MailboxOwner,
    ProviderType,
    ServerSettings,
)
from mailbox_link_contract.failures import FailureCode
from mailbox_link_shared.addresses import mailbox_key


class VerifiedSettings(Protocol):
    """What a verification proved that a mailbox's details keep (registry_store.Verification)."""

    @property
    def imap(self) -> ServerSettings: ...
    @property
    def smtp(self) -> ServerSettings: ...
    @property
    def auth(self) -> AuthMethod: ...
    @property
    def authority(self) -> Authority | None: ...


class LinkState(StrEnum):
    """Where a link request stands in the registry."""

    RESERVING = "reserving"  # claiming its address and a plan slot (no decision yet)
    RESERVED = "reserved"  # holds a plan slot, waiting for verification (not the address)
    LINKED = "linked"  # verified and linked: holds both until unlinked
    REJECTED = "rejected"  # ended without a link: refused, failed verification or expired
    UNLINKED = "unlinked"  # was linked, then unlinked
    # A reconnect link (one that re-verifies its owner's linked mailbox, ADR 0019), verified
    # and committed to reconnecting: its mailbox's link is being given the new verification.
    RECONNECTING = "reconnecting"
    RECONNECTED = "reconnected"  # its mailbox took its verification; the link itself ended


IN_FLIGHT = frozenset({LinkState.RESERVING, LinkState.RESERVED})
# In these states a link holds what it claimed; in the others it has let go of everything.
HOLDING = IN_FLIGHT | {LinkState.LINKED, LinkState.RECONNECTING}
ENDED = frozenset({LinkState.REJECTED, LinkState.UNLINKED, LinkState.RECONNECTED})
# Not at rest: housekeeping keeps the link's pending entry until it leaves these.
UNFINISHED = IN_FLIGHT | {LinkState.RECONNECTING}
# An ended link in these states keeps no credentials; a reconnected one's verification is its
# mailbox's now (MailboxDetails.verified_by).
DROPS_VERIFICATION = frozenset({LinkState.REJECTED, LinkState.UNLINKED})


@dataclass(frozen=True)
class MailboxDetails:
    """What the product needs to use a linked mailbox (its sealed credentials are kept apart,
    with the verification, and deleted when it is unlinked)."""

    mailbox_id: str
    imap: ServerSettings
    smtp: ServerSettings
    linked_at: datetime
    auth: AuthMethod = AuthMethod.PASSWORD
    # Set when the provider stopped accepting the mailbox's authorization for good.
    reconnect_required: FailureCode | None = None
    # Which rule made the servers authoritative for the address (None: linked before 1.3.0).
    authority: Authority | None = None
    # The reconnect link whose verification (servers, sealed credentials) the mailbox uses
    # now; None: its own link's. Also what tells a reconnect already applied (ADR 0019).
    verified_by: str | None = None
    # Set while health checks fail for a reason other than refused credentials (issue 17): its
    # servers could not be reached or answered with an error. Never set with reconnect_required.
    degraded: FailureCode | None = None

    @property
    def health(self) -> MailboxHealth:
        """What its decisions say of the mailbox's health (absent fields read as active)."""
        if self.reconnect_required is not None:
            return MailboxHealth.RECONNECT_REQUIRED
        if self.degraded is not None:
            return MailboxHealth.DEGRADED
        return MailboxHealth.ACTIVE

    @property
    def health_code(self) -> FailureCode | None:
        """Why it is not active (None when active)."""
        return self.reconnect_required or self.degraded


def with_health(
    mailbox: MailboxDetails, health: MailboxHealth, code: FailureCode | None
) -> MailboxDetails:
    """The mailbox in this health (`code`: why, unless active)."""
    if health is MailboxHealth.ACTIVE or code is None:
        return replace(mailbox, reconnect_required=None, degraded=None)
    if health is MailboxHealth.RECONNECT_REQUIRED:
        return replace(mailbox, reconnect_required=code, degraded=None)
    return replace(mailbox, reconnect_required=None, degraded=code)


@dataclass(frozen=True)
class Decision:
    """One step of a link's life; never changed once stored.

    `outbox` is the event announcing it (published after it is stored, and again by whoever
    finds it unannounced); `claims` are the ids of the claims the link holds from this step.
    """

    step: int
    state: LinkState
    decided_at: datetime
    outbox: dict[str, Any] | None = None
    mailbox: MailboxDetails | None = None
    claims: tuple[str, ...] = ()
    # On a reconnect link's decisions: the link under which the mailbox it reconnects is linked.
    reconnects: str | None = None

    @property
    def event_id(self) -> str | None:
        return str(self.outbox["event_id"]) if self.outbox else None


@dataclass(frozen=True)
class Progress:
    """A hint kept on the link's request: the latest step and state seen, and up to which step
    every decision is known to be announced. Written after the facts it reports, so it may lag
    behind them but never runs ahead: readers start from it and look for later steps."""

    step: int = 0
    state: LinkState = LinkState.RESERVING
    announced: int = 0
    claims: tuple[str, ...] = ()  # those the decision at `step` names
    reconnects: str | None = None  # what the decision at `step` names

    @property
    def at_rest_ended(self) -> bool:
        """True if the link has ended and its end is on the topic: it holds nothing."""
        return self.state in ENDED and self.announced >= self.step


@dataclass(frozen=True)
class LinkRecord:
    """One link request: what was asked (never changed), and its latest decision.

    `progress` is the hint as read; `latest` the latest decision as found (None: RESERVING).
    """

    link_id: str
    owner: MailboxOwner
    address: str
    provider: ProviderType
    expires_at: datetime
    progress: Progress = field(default_factory=Progress)
    # Provider oidc: the operator's name of the OpenID provider (contract 1.5.0).
    oidc_provider: str | None = None
    latest: Decision | None = None

    @property
    def step(self) -> int:
        return self.latest.step if self.latest else 0

    @property
    def state(self) -> LinkState:
        return self.latest.state if self.latest else LinkState.RESERVING

    @property
    def mailbox(self) -> MailboxDetails | None:
        return self.latest.mailbox if self.latest else None

    @property
    def claims(self) -> tuple[str, ...]:
        return self.latest.claims if self.latest else ()

    @property
    def reconnects(self) -> str | None:
        """For a reconnect link: the link of the mailbox it reconnects."""
        return self.latest.reconnects if self.latest else None

    @property
    def mailbox_key(self) -> str:
        """What the address claim is taken on: one key for every spelling of the mailbox."""
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


def may_reconnect(requester: LinkRecord, holder: LinkRecord, asked: bool, now: datetime) -> bool:
    """True if a request of the holder's own user reconnects the holder's mailbox instead of
    being answered already_linked: the holder is linked, the request comes through the same
    verifier, and the user asked to reconnect or the mailbox needs it."""
    if is_stale(holder, now) or holder.state is not LinkState.LINKED or holder.mailbox is None:
        return False
    if holder.owner != requester.owner or holder.provider is not requester.provider:
        return False
    if holder.oidc_provider != requester.oidc_provider:  # another OpenID provider
        return False
    return asked or holder.mailbox.reconnect_required is not None


def reconnected_details(
    mailbox: MailboxDetails, verified_by: str, verification: VerifiedSettings
) -> MailboxDetails:
    """The mailbox after a reconnect: same id and linked_at, the new verification's servers,
    auth and authority, and usable again."""
    return replace(
        mailbox,
        imap=verification.imap,
        smtp=verification.smtp,
        auth=verification.auth,
        authority=verification.authority or mailbox.authority,
        reconnect_required=None,
        degraded=None,
        verified_by=verified_by,
    )


def is_stale(holder: LinkRecord, now: datetime) -> bool:
    """True if a link that holds an address or a slot has ended or expired, so must let go."""
    return holder.state not in HOLDING or holder.has_expired(now)


def counts_claim(holder: LinkRecord, claim_id: str) -> bool:
    """True if a live link really holds this claim of its.

    A link still reserving holds every claim it made. From its first decision on, it holds only
    the claims that decision names: a claim made by a redelivered request that lost the race to
    decide (a second plan slot, say) counts for nothing and is free for others.
    """
    if holder.latest is None or claim_id in holder.latest.claims:
        return True
    # A reserved link claims its address only once verified, right before deciding LINKED:
    # that claim counts from the moment it is made, or two verified links could both link.
    return holder.state is LinkState.RESERVED and claim_id.startswith(
        f"mailbox:{holder.mailbox_key}#"
    )
