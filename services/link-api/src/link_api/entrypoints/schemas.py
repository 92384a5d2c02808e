"""The HTTP request and response shapes of link-api, with strict validation of every field."""

from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StrictBool,
    StrictInt,
    field_validator,
)

from link_api.domain.link_request import LinkPlan, LinkRequest
from link_api.domain.link_status import LinkStatus, LinkView
from link_api.domain.providers import AuthMethod, Provider, Server
from mailbox_link_contract.events import MailboxOwner, ProviderType, ServerSettings
from mailbox_link_contract.values import ConnectionSecurity
from mailbox_link_shared.addresses import normalize_address, normalize_host
from mailbox_link_shared.credentials import MailboxCredentials
from mailbox_link_shared.oidc_providers import OIDC_PROVIDER_NAME_PATTERN

MAX_USERNAME_LENGTH = 320
MAX_PASSWORD_LENGTH = 1024
Password = Annotated[SecretStr, Field(min_length=1, max_length=MAX_PASSWORD_LENGTH)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)


class ServerIn(_Strict):
    """How to reach one mail server, as the user typed it."""

    host: str
    # Strict: true, 993.0 and "993" are refused (lax mode read `true` as port 1).
    port: StrictInt
    security: ConnectionSecurity
    username: str | None = None

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        return normalize_host(value)

    @field_validator("port")
    @classmethod
    def _port(cls, value: int) -> int:
        if not 1 <= value <= 65535:
            raise ValueError("Use a port between 1 and 65535, e.g. 993 for IMAP over SSL/TLS.")
        return value

    @field_validator("username")
    @classmethod
    def _username(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.strip() or len(value) > MAX_USERNAME_LENGTH:
            raise ValueError(
                f"Use a username of 1 to {MAX_USERNAME_LENGTH} characters, or omit it."
            )
        if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
            raise ValueError("A username cannot contain control characters.")
        return value.strip()


class ImapIn(ServerIn):
    """The IMAP server, and the password to log in with."""

    password: Password


class SmtpIn(ServerIn):
    """The SMTP server; username and password default to the IMAP ones."""

    password: Password | None = None


class LinkRequestIn(_Strict):
    """POST body: link a mailbox.

    Give `imap` and `smtp` to use exactly those servers. Otherwise the servers come from
    `provider`, or from detection when it is omitted: give the `password` (an app password
    where the provider needs one) to link with it, or no password to sign in at a provider
    that offers it (Google, Microsoft, Yahoo, AOL, or the deployment's OpenID Connect
    providers: `provider` "oidc" with `oidc_provider`, or an address in their domains).
    """

    email: str = Field(examples=["alice@example.org"])
    terms_accepted: StrictBool
    provider: Provider | None = Field(
        default=None, description="Overrides detection: who hosts the mailbox."
    )
    oidc_provider: str | None = Field(
        default=None,
        pattern=OIDC_PROVIDER_NAME_PATTERN,
        description='With provider "oidc": which OpenID Connect provider of this deployment '
        "(GET /v1/providers); omitted, the one serving the address's domain.",
    )
    password: Password | None = None
    auth: AuthMethod | None = Field(
        default=None,
        description="password or oauth (sign in at the provider). Omitted: oauth when no "
        "password is given and the provider offers it, otherwise password.",
    )
    imap: ImapIn | None = None
    smtp: SmtpIn | None = None
    reconnect: StrictBool = Field(
        default=False,
        description="true: give a new password to (or sign in again for) a mailbox you have "
        "linked already; it keeps its mailbox_id and plan slot, and the link ends linked "
        "with reconnected true. A mailbox whose status is reconnect_required is reconnected "
        "without it; an active one answers already_linked without it.",
    )

    @field_validator("email")
    @classmethod
    def _email(cls, value: str) -> str:
        return normalize_address(value)

    @field_validator("terms_accepted")
    @classmethod
    def _terms(cls, value: bool) -> bool:
        if not value:
            raise ValueError("Accept the terms of service to link a mailbox: set it to true.")
        return value

    def to_domain(self, owner: MailboxOwner) -> LinkRequest:
        """Returns the request with the typed servers; usernames and SMTP password defaulted."""
        if self.imap is None or self.smtp is None:
            raise ValueError("to_domain needs typed servers; use with_settings otherwise")
        imap_username = self.imap.username or self.email
        imap_password = self.imap.password.get_secret_value()
        smtp_password = (
            self.smtp.password.get_secret_value() if self.smtp.password else imap_password
        )
        return LinkRequest(
            owner=owner,
            address=self.email,
            provider=ProviderType.IMAP,
            imap=_server(self.imap, imap_username),
            smtp=_server(self.smtp, self.smtp.username or imap_username),
            credentials=MailboxCredentials(imap_password, smtp_password),
        )

    def with_plan(self, owner: MailboxOwner, plan: LinkPlan) -> LinkRequest:
        """Returns the request with the plan's servers, and the (app) password for a password
        link; an OAuth link carries no password."""
        imap = _server(plan.settings.imap, plan.settings.imap.username_for(self.email))
        smtp = _server(plan.settings.smtp, plan.settings.smtp.username_for(self.email))
        if plan.auth is AuthMethod.OAUTH:
            return LinkRequest(
                owner,
                self.email,
                plan.provider_type,
                imap,
                smtp,
                None,
                AuthMethod.OAUTH,
                plan.authority,
                plan.oidc_provider,
            )
        if self.password is None:
            raise ValueError("a password link needs the password")
        password = app_password(plan.provider, self.password.get_secret_value())
        credentials = MailboxCredentials(password, password)
        return LinkRequest(
            owner,
            self.email,
            plan.provider_type,
            imap,
            smtp,
            credentials,
            authority=plan.authority,
        )


def app_password(provider: Provider, password: str) -> str:
    """Returns the password as the provider checks it: app passwords lose the spaces the
    provider prints them with ("abcd efgh ijkl mnop")."""
    if provider in (Provider.GOOGLE, Provider.YAHOO, Provider.AOL, Provider.ICLOUD):
        return "".join(password.split())
    return password


def _server(server: ServerIn | Server, username: str) -> ServerSettings:
    return ServerSettings(
        host=server.host, port=server.port, security=server.security, username=username
    )


def link_body(link: LinkView, status_url: str) -> dict[str, Any]:
    """Returns the JSON view of a link."""
    return {
        "link_id": link.link_id,
        "email": link.address,
        "provider": link.provider.value,
        "status": link.status.value,
        "failure": link.failure.model_dump(mode="json") if link.failure else None,
        "mailbox_id": link.mailbox_id,
        "already_linked": link.already_linked,
        "reconnected": link.reconnected,
        "auth": link.auth.value,
        "authorization": _authorization_body(link),
        "created_at": link.created_at.isoformat(),
        "updated_at": link.updated_at.isoformat(),
        "status_url": status_url,
    }


def _authorization_body(link: LinkView) -> dict[str, Any] | None:
    # Only while the user must sign in: a URL shown after the link ended could not finish it.
    if link.status is not LinkStatus.AUTHORIZATION_REQUIRED or link.authorize_url is None:
        return None
    expires_at = link.authorization_expires_at
    return {"url": link.authorize_url, "expires_at": expires_at.isoformat() if expires_at else None}
