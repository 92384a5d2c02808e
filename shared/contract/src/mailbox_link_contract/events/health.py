"""Events of a linked mailbox's health (since 1.6.0): a check asked for, its result, and a
change of the mailbox's state that internal services act on (pause sending, ask the user to
reconnect)."""

from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import Field

from mailbox_link_contract.events.envelope import Envelope, utc_now
from mailbox_link_contract.events.link import (
    AuthMethod,
    Failure,
    LinkId,
    MailboxOwner,
    ProviderType,
    ServerSettings,
    _Data,
)
from mailbox_link_contract.values import EncryptedSecret


class MailboxHealth(StrEnum):
    """What a linked mailbox's last checks say. New values may be added: treat one you do not
    know as `degraded` (usable, but not known to work)."""

    ACTIVE = "active"  # the last check logged in and could send
    # The servers could not be reached or answered with an error: retried with back-off; the
    # user need not act, and the mailbox is never made reconnect_required for this.
    DEGRADED = "degraded"
    # The provider or server refused our credentials for good: the user must reconnect it.
    RECONNECT_REQUIRED = "reconnect_required"


class CheckReason(StrEnum):
    """Why a check runs."""

    SCHEDULED = "scheduled"
    ON_DEMAND = "on_demand"


class MailboxCheckRequestedData(_Data):
    check_id: str = Field(description="Unique per check; MailboxChecked names it.")
    mailbox_id: str
    link_id: LinkId = Field(description="The link the mailbox is linked under.")
    owner: MailboxOwner
    address: str
    provider: ProviderType
    oidc_provider: str | None = None
    auth: AuthMethod
    imap: ServerSettings
    smtp: ServerSettings
    credentials: EncryptedSecret | None = Field(
        default=None,
        description="For auth password: the sealed {imap_password, smtp_password} bound to the "
        "address, as in LinkRequested. For oauth: none (the broker holds the tokens).",
    )
    reason: CheckReason = CheckReason.SCHEDULED
    requested_at: datetime = Field(default_factory=utc_now)


class MailboxCheckRequested(Envelope):
    """The registry asks the mailbox's verifier to log in to it again (imap-verifier for
    password mailboxes, oauth-broker for oauth: a refresh when due, then a login)."""

    type: Literal["MailboxCheckRequested"] = "MailboxCheckRequested"
    data: MailboxCheckRequestedData


class MailboxCheckedData(_Data):
    check_id: str
    mailbox_id: str
    link_id: LinkId
    owner: MailboxOwner
    address: str
    provider: ProviderType
    failure: Failure | None = Field(
        default=None, description="None: IMAP and SMTP logins worked. Else why not."
    )
    checked_at: datetime = Field(default_factory=utc_now)


class MailboxChecked(Envelope):
    """The result of one MailboxCheckRequested, from the verifier that ran it."""

    type: Literal["MailboxChecked"] = "MailboxChecked"
    data: MailboxCheckedData


class MailboxHealthChangedData(_Data):
    mailbox_id: str
    link_id: LinkId = Field(description="The link the mailbox is linked under.")
    owner: MailboxOwner
    address: str
    provider: ProviderType
    oidc_provider: str | None = None
    health: MailboxHealth
    previous_health: MailboxHealth
    failure: Failure | None = Field(
        default=None, description="Why it is degraded or reconnect_required; None when active."
    )
    changed_at: datetime = Field(default_factory=utc_now)


class MailboxHealthChanged(Envelope):
    """A linked mailbox's health changed. On reconnect_required stop using it and ask its user
    to reconnect; on degraded expect sends to fail for now; on active resume."""

    type: Literal["MailboxHealthChanged"] = "MailboxHealthChanged"
    data: MailboxHealthChangedData
