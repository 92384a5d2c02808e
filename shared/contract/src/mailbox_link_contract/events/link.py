"""Events of the link lifecycle: requested, verified or failed, linked or rejected, unlinked."""

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mailbox_link_contract.events.envelope import Envelope, utc_now
from mailbox_link_contract.failures import FailureCode, text_for
from mailbox_link_contract.values import ConnectionSecurity, EncryptedSecret


class ProviderType(StrEnum):
    """Who verifies the mailbox: the IMAP verifier (any server, with a password) or the OAuth
    broker (the provider's sign-in). New values may be added: ignore the ones you do not serve."""

    IMAP = "imap"
    GOOGLE = "google"
    MICROSOFT = "microsoft"
    YAHOO = "yahoo"
    AOL = "aol"
    # Since 1.5.0: an OpenID Connect provider the operator configured; `oidc_provider` names it.
    OIDC = "oidc"


class AuthMethod(StrEnum):
    """How we log in to the mailbox."""

    PASSWORD = "password"  # noqa: S105 - a method's name, not a password
    OAUTH = "oauth"


class Authority(StrEnum):
    """Why the servers that verify a link speak for its address (since 1.3.0). New values may
    be added: treat one you do not know as the weakest, ``ownership_proof``."""

    PROVIDER = "provider"  # the address's known provider: its own servers or its sign-in
    PUBLISHED_SETTINGS = "published_settings"  # the domain publishes them (autoconfig, SRV)
    SAME_DOMAIN = "same_domain"  # same registrable domain as the address or its MX hosts
    OWNERSHIP_PROOF = "ownership_proof"  # none of those: a mail sent to the address must arrive


# Link ids key documents and name document fields in the registry: letters, digits, - and _.
LinkId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


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
    link_id: LinkId
    owner: MailboxOwner
    address: str = Field(description="Normalized mailbox address.")
    provider: ProviderType
    auth: AuthMethod = Field(
        default=AuthMethod.PASSWORD,
        description="password: credentials hold the passwords; oauth: the user signs in at "
        "the provider, and the request carries no credentials.",
    )
    imap: ServerSettings = Field(description="For oauth, the provider's IMAP server.")
    smtp: ServerSettings = Field(description="For oauth, the provider's SMTP server.")
    credentials: EncryptedSecret | None = Field(
        default=None,
        description="Sealed JSON bound to the address: {imap_password, smtp_password} for "
        "password links; absent from oauth link requests; in MailboxVerified of an oauth link, "
        "the granted tokens {access_token, refresh_token, expires_at, scope}.",
    )
    requested_at: datetime = Field(default_factory=utc_now)
    authority: Authority | None = Field(
        default=None,
        description="Since 1.3.0: the rule that makes these servers speak for the address. "
        "ownership_proof: the verifier must find a one-time message sent to the address in "
        "the typed INBOX before the link counts as verified. Absent in older events.",
    )
    oidc_provider: str | None = Field(
        default=None,
        description="Since 1.5.0, for provider oidc: the name the operator gave the OpenID "
        "Connect provider (e.g. 'corp'). Absent for every other provider.",
    )
    reconnect: bool = Field(
        default=False,
        description="Since 1.5.0: the user asks to re-authorize (or give a new password for) "
        "the mailbox they already have linked. If it is theirs, the registry reserves the "
        "link without a plan slot, and success keeps its mailbox_id (MailboxReconnected). A "
        "mailbox of theirs that is reconnect_required is reconnected even without this flag.",
    )

    @model_validator(mode="after")
    def _password_links_carry_credentials(self) -> "LinkRequestedData":
        if self.auth is AuthMethod.PASSWORD and self.credentials is None:
            raise ValueError("a password link carries its sealed credentials")
        return self


class LinkRequested(Envelope):
    """A user asked to link a mailbox; verifiers for its provider type pick it up."""

    type: Literal["LinkRequested"] = "LinkRequested"
    data: LinkRequestedData


class MailboxVerifiedData(LinkRequestedData):
    verified_at: datetime = Field(default_factory=utc_now)

    @model_validator(mode="after")
    def _verified_links_carry_credentials(self) -> "MailboxVerifiedData":
        if self.credentials is None:
            raise ValueError("a verified mailbox carries the sealed credentials that worked")
        return self

    @property
    def verified_credentials(self) -> EncryptedSecret:
        """The sealed credentials that worked (always present in a verification)."""
        if self.credentials is None:  # pragma: no cover - refused by the validator
            raise ValueError("a verified mailbox carries its credentials")
        return self.credentials


class MailboxVerified(Envelope):
    """We logged in to the mailbox's servers with the given credentials."""

    type: Literal["MailboxVerified"] = "MailboxVerified"
    data: MailboxVerifiedData


class OtherFailure(_Data):
    """One more thing that failed, found by the same check (since 1.5.0)."""

    code: FailureCode
    message: str
    remediation: str
    detail: str = ""


class Failure(_Data):
    """Why something did not work, in words for machines, people and operators."""

    code: FailureCode
    message: str
    remediation: str
    detail: str = ""
    other_failures: tuple[OtherFailure, ...] = Field(
        default=(),
        description="Since 1.5.0: the other problems the same check found by its deadline "
        "(e.g. a wrong IMAP password and a wrong SMTP security), so a user can fix them all "
        "at once. `code` is the primary one. Empty in older events.",
    )

    @classmethod
    def of(cls, code: FailureCode, detail: str = "") -> "Failure":
        """Builds a failure with the catalogue's words for its code."""
        text = text_for(code)
        return cls(code=code, message=text.message, remediation=text.remediation, detail=detail)

    def with_others(self, others: "list[Failure] | tuple[Failure, ...]") -> "Failure":
        """Returns this failure with `others` listed as other_failures (their own others are
        flattened in; duplicates of a code already named are dropped)."""
        seen = {self.code, *(o.code for o in self.other_failures)}
        extra = list(self.other_failures)
        for other in others:
            items: list[Failure | OtherFailure] = [other, *other.other_failures]
            for item in items:
                if item.code not in seen:
                    seen.add(item.code)
                    extra.append(
                        OtherFailure(
                            code=item.code,
                            message=item.message,
                            remediation=item.remediation,
                            detail=item.detail,
                        )
                    )
        return self.model_copy(update={"other_failures": tuple(extra)})


class VerificationFailedData(_Data):
    link_id: LinkId
    owner: MailboxOwner
    address: str
    provider: ProviderType
    failure: Failure


class VerificationFailed(Envelope):
    """We could not log in to the mailbox; the failure says why and what to do."""

    type: Literal["VerificationFailed"] = "VerificationFailed"
    data: VerificationFailedData


class LinkReservedData(_Data):
    link_id: LinkId
    owner: MailboxOwner
    address: str
    expires_at: datetime = Field(
        description="When the reservation lapses if verification has not finished by then."
    )
    provider: ProviderType | None = Field(
        default=None,
        description="The link request's provider (since 1.2.0), so a verifier can skip "
        "reservations of links it does not serve.",
    )
    mailbox_id: str | None = Field(
        default=None,
        description="Since 1.5.0: set when this link reconnects the owner's existing mailbox "
        "(it keeps this id, and takes no plan slot).",
    )


class LinkReserved(Envelope):
    """The registry accepted the link request: until `expires_at` it holds one of the user's
    plan slots (links in flight count against the plan) and the user's own hold on this
    mailbox (one link in flight per user and mailbox).

    Since 1.3.0 it does not hold the address: other accounts' requests for it are reserved
    too, and nothing is said about whether it is linked elsewhere. That is decided once this
    link's verification succeeds (the first verified link is linked; a later one gets
    `LinkRejected` already_linked_elsewhere); a failed verification ends with its own failure.
    Only after this may a verifier log in or a user be sent to a provider's sign-in.
    """

    type: Literal["LinkReserved"] = "LinkReserved"
    data: LinkReservedData


class LinkRejectedData(_Data):
    link_id: LinkId
    owner: MailboxOwner
    address: str
    failure: Failure
    plan_limit: int | None = Field(default=None, description="Set for plan_limit_reached.")
    mailbox_id: str | None = Field(
        default=None, description="Set for already_linked: the user's existing mailbox."
    )


class LinkRejected(Envelope):
    """The link request ended without a new link; the failure says why.

    The registry's own reasons (already_linked_elsewhere, plan_limit_reached, already_linked,
    link_in_progress, reservation_expired) and the verifier's reasons alike: this is the one
    final answer for every link request that did not end in MailboxLinked.
    """

    type: Literal["LinkRejected"] = "LinkRejected"
    data: LinkRejectedData


class MailboxLinkedData(_Data):
    link_id: LinkId
    mailbox_id: str
    owner: MailboxOwner
    address: str
    provider: ProviderType
    oidc_provider: str | None = Field(
        default=None, description="Since 1.5.0, for provider oidc: the operator's name for it."
    )
    linked_at: datetime = Field(default_factory=utc_now)


class MailboxLinked(Envelope):
    """The mailbox now belongs to this user; the product may send and read as them."""

    type: Literal["MailboxLinked"] = "MailboxLinked"
    data: MailboxLinkedData


class MailboxReconnectedData(_Data):
    link_id: LinkId = Field(description="The link request that reconnected it.")
    mailbox_id: str = Field(description="Unchanged: the id the mailbox had before.")
    owner: MailboxOwner
    address: str
    provider: ProviderType
    oidc_provider: str | None = None
    reconnected_at: datetime = Field(default_factory=utc_now)


class MailboxReconnected(Envelope):
    """Since 1.5.0: the owner re-authorized their linked mailbox (or gave a new password) and
    it works again, with the same mailbox_id and plan slot. It ends its link request, as
    MailboxLinked would; a product resumes reading and sending, and stops asking the user to
    reconnect."""

    type: Literal["MailboxReconnected"] = "MailboxReconnected"
    data: MailboxReconnectedData


class UnlinkedBy(StrEnum):
    """Who ended the link."""

    USER = "user"
    ADMIN = "admin"


class MailboxUnlinkedData(_Data):
    mailbox_id: str
    owner: MailboxOwner
    address: str
    unlinked_at: datetime = Field(default_factory=utc_now)
    link_id: LinkId | None = Field(default=None, description="The link request that linked it.")
    unlinked_by: UnlinkedBy = UnlinkedBy.USER


class MailboxUnlinked(Envelope):
    """The mailbox is free again; any account may link it."""

    type: Literal["MailboxUnlinked"] = "MailboxUnlinked"
    data: MailboxUnlinkedData


class UserPlanChangedData(_Data):
    owner: MailboxOwner
    plan: str = Field(description="A plan name the registry is configured with.")
    changed_at: datetime = Field(
        description="When billing changed it; an older change never overrides a newer one."
    )


class UserPlanChanged(Envelope):
    """Billing moved a user to another plan; the registry applies its mailbox limit."""

    type: Literal["UserPlanChanged"] = "UserPlanChanged"
    data: UserPlanChangedData

    def partition_key(self) -> bytes:
        """Returns the user, not a mailbox, so one user's plan changes stay in order."""
        owner = self.data.owner
        return f"{owner.account_id}/{owner.user_id}".encode()


class AuthorizationRequiredData(_Data):
    link_id: LinkId
    owner: MailboxOwner
    address: str
    provider: ProviderType
    authorize_url: str = Field(
        description="Where to send the user's browser: the provider's sign-in and consent."
    )
    expires_at: datetime = Field(description="After this the URL no longer completes the link.")


class AuthorizationRequired(Envelope):
    """The user must sign in at the provider to finish this link.

    Published only once the registry has reserved the link (LinkReserved), so a rejected
    request never shows a sign-in URL.
    """

    type: Literal["AuthorizationRequired"] = "AuthorizationRequired"
    data: AuthorizationRequiredData


class MailboxReconnectRequiredData(_Data):
    mailbox_id: str
    link_id: LinkId
    owner: MailboxOwner
    address: str
    provider: ProviderType
    failure: Failure
    detected_at: datetime = Field(default_factory=utc_now)


class MailboxReconnectRequired(Envelope):
    """A linked mailbox's authorization stopped working for good (revoked, password changed).

    The mailbox stays linked to its owner, but nothing can read or send as it until the user
    links it again; a product asks them to reconnect.
    """

    type: Literal["MailboxReconnectRequired"] = "MailboxReconnectRequired"
    data: MailboxReconnectRequiredData
