"""Events of the link lifecycle: requested, verified or failed, linked or rejected, unlinked."""

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from mailbox_link_shared.crypto import EncryptedSecret
from mailbox_link_shared.events.envelope import Envelope, utc_now
from mailbox_link_shared.failures import FailureCode, text_for
from mailbox_link_shared.mail_settings import ConnectionSecurity


class ProviderType(StrEnum):
    """Who hosts the mailbox and so which service verifies it."""

    IMAP = "imap"


class _Data(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class ServerSettings(_Data):
    """How to reach one mail server (IMAP or SMTP); no secret in here."""

    host: str
    port: int = Field(ge=1, le=65535)
    security: ConnectionSecurity
    username: str


class MailboxOwner(_Data):
    """Who is linking the mailbox: a user of an account of the product."""

    account_id: str
    user_id: str


class LinkRequestedData(_Data):
    link_id: str
    owner: MailboxOwner
    address: str = Field(description="Normalized mailbox address.")
    provider: ProviderType
    imap: ServerSettings
    smtp: ServerSettings
    credentials: EncryptedSecret = Field(
        description="Sealed JSON {imap_password, smtp_password}, bound to the address."
    )
    requested_at: datetime = Field(default_factory=utc_now)


class LinkRequested(Envelope):
    """A user asked to link a mailbox; verifiers for its provider type pick it up."""

    type: Literal["LinkRequested"] = "LinkRequested"
    data: LinkRequestedData


class MailboxVerifiedData(LinkRequestedData):
    verified_at: datetime = Field(default_factory=utc_now)


class MailboxVerified(Envelope):
    """We logged in to the mailbox's servers with the given credentials."""

    type: Literal["MailboxVerified"] = "MailboxVerified"
    data: MailboxVerifiedData


class Failure(_Data):
    """Why something did not work, in words for machines, people and operators."""

    code: FailureCode
    message: str
    remediation: str
    detail: str = ""

    @classmethod
    def of(cls, code: FailureCode, detail: str = "") -> "Failure":
        """Builds a failure with the catalogue's words for its code."""
        text = text_for(code)
        return cls(code=code, message=text.message, remediation=text.remediation, detail=detail)


class VerificationFailedData(_Data):
    link_id: str
    owner: MailboxOwner
    address: str
    provider: ProviderType
    failure: Failure


class VerificationFailed(Envelope):
    """We could not log in to the mailbox; the failure says why and what to do."""

    type: Literal["VerificationFailed"] = "VerificationFailed"
    data: VerificationFailedData


class LinkRejectedData(_Data):
    link_id: str
    owner: MailboxOwner
    address: str
    failure: Failure
    plan_limit: int | None = Field(default=None, description="Set for plan_limit_reached.")


class LinkRejected(Envelope):
    """The registry refused the link: mailbox taken elsewhere, or plan limit reached."""

    type: Literal["LinkRejected"] = "LinkRejected"
    data: LinkRejectedData


class MailboxLinkedData(_Data):
    link_id: str
    mailbox_id: str
    owner: MailboxOwner
    address: str
    provider: ProviderType
    linked_at: datetime = Field(default_factory=utc_now)


class MailboxLinked(Envelope):
    """The mailbox now belongs to this user; the product may send and read as them."""

    type: Literal["MailboxLinked"] = "MailboxLinked"
    data: MailboxLinkedData


class MailboxUnlinkedData(_Data):
    mailbox_id: str
    owner: MailboxOwner
    address: str
    unlinked_at: datetime = Field(default_factory=utc_now)


class MailboxUnlinked(Envelope):
    """The mailbox is free again; any account may link it."""

    type: Literal["MailboxUnlinked"] = "MailboxUnlinked"
    data: MailboxUnlinkedData


VerificationResult = Annotated[MailboxVerified | VerificationFailed, Field(discriminator="type")]
MailboxEvent = Annotated[
    MailboxLinked | LinkRejected | MailboxUnlinked, Field(discriminator="type")
]
