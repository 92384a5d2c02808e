"""The HTTP request and response shapes of link-api, with strict validation of every field."""

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, StrictBool, field_validator

from link_api.domain.link_request import LinkRequest
from link_api.domain.link_status import LinkView
from mailbox_link_shared.addresses import normalize_address, normalize_host
from mailbox_link_shared.credentials import MailboxCredentials
from mailbox_link_shared.events import MailboxOwner, ProviderType, ServerSettings
from mailbox_link_shared.mail_settings import ConnectionSecurity

MAX_USERNAME_LENGTH = 320
MAX_PASSWORD_LENGTH = 1024
Password = Annotated[SecretStr, Field(min_length=1, max_length=MAX_PASSWORD_LENGTH)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)


class ServerIn(_Strict):
    """How to reach one mail server, as the user typed it."""

    host: str
    port: int
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
    """POST body: link a mailbox with custom IMAP/SMTP settings."""

    email: str = Field(examples=["alice@example.org"])
    terms_accepted: StrictBool
    provider: Literal["imap"] = "imap"
    imap: ImapIn
    smtp: SmtpIn

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
        """Returns the normalized request, with usernames and SMTP password defaulted."""
        imap_username = self.imap.username or self.email
        imap_password = self.imap.password.get_secret_value()
        smtp_password = (
            self.smtp.password.get_secret_value() if self.smtp.password else imap_password
        )
        return LinkRequest(
            owner=owner,
            address=self.email,
            provider=ProviderType(self.provider),
            imap=_server(self.imap, imap_username),
            smtp=_server(self.smtp, self.smtp.username or imap_username),
            credentials=MailboxCredentials(imap_password, smtp_password),
        )


def _server(server: ServerIn, username: str) -> ServerSettings:
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
        "created_at": link.created_at.isoformat(),
        "updated_at": link.updated_at.isoformat(),
        "status_url": status_url,
    }
