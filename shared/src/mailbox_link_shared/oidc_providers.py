"""The generic OpenID Connect providers an operator configures without code (issue 14).

One variable, read by link-api and the oauth-broker alike: MBL_OIDC_PROVIDERS, a JSON object of
provider name to its settings (README, "Adding a generic OpenID Connect provider"). This
module holds the part both read: the name, the issuer, the address domains it serves, its mail
servers and SASL mechanism.
link-api ignores the broker's fields (client credentials, sign-in options); the broker extends
this model with them (oauth_broker/config.py) and refuses unknown fields there.
"""

from enum import StrEnum
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from mailbox_link_contract.values import ConnectionSecurity

# Also the `oidc_provider` of the events: short, lowercase, safe in env var names and URLs.
OIDC_PROVIDER_NAME_PATTERN = r"^[a-z0-9-]{1,32}$"
OidcProviderName = Annotated[str, StringConstraints(pattern=OIDC_PROVIDER_NAME_PATTERN)]
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


class SaslMechanism(StrEnum):
    """How the mail servers take the access token."""

    XOAUTH2 = "xoauth2"  # Google's and Microsoft's; Dovecot's too
    OAUTHBEARER = "oauthbearer"  # RFC 7628, the standard one


class OidcMailServer(BaseModel):
    """One of the provider's mail servers; the login is always the mailbox's address."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = Field(min_length=1, max_length=253)
    port: int = Field(ge=1, le=65535)
    security: ConnectionSecurity


class OidcProviderPublic(BaseModel):
    """What link-api and the broker both know of a configured OpenID Connect provider."""

    # The broker's extension forbids unknown fields; link-api skips the broker's.
    model_config = ConfigDict(frozen=True, extra="ignore")

    issuer: str = Field(description="The provider's issuer URL; discovery must name the same.")
    display_name: str = Field(default="", max_length=100, description="Shown in the picker.")
    domains: tuple[str, ...] = Field(
        default=(), description="Address domains linked through this provider."
    )
    imap: OidcMailServer
    smtp: OidcMailServer
    sasl_mechanism: SaslMechanism = SaslMechanism.XOAUTH2

    @field_validator("issuer")
    @classmethod
    def _issuer_is_a_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme != "https" and not (parts.scheme == "http" and parts.hostname in _LOOPBACK):
            raise ValueError(
                "the issuer must be an https URL (http only on the loopback, for tests)"
            )
        if parts.query or parts.fragment:
            raise ValueError("an issuer URL has no query or fragment (OpenID Discovery 3)")
        return value

    @field_validator("domains")
    @classmethod
    def _domains_lowercase(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        cleaned = tuple(domain.strip().lower().rstrip(".") for domain in value)
        bad = [domain for domain in cleaned if not domain or "@" in domain or " " in domain]
        if bad:
            raise ValueError(f"not a mail domain: {bad[0]!r} (give e.g. corp.example)")
        return cleaned

    def title(self, name: str) -> str:
        """Returns what a provider picker shows."""
        return self.display_name or name


class OidcProvidersSettings(BaseSettings):
    """The MBL_OIDC_PROVIDERS part of a service's settings (a mix-in)."""

    model_config = SettingsConfigDict(env_prefix="MBL_", extra="ignore", frozen=True)

    oidc_providers: dict[OidcProviderName, OidcProviderPublic] = Field(
        default_factory=dict,
        description="JSON object of OpenID Connect provider name ([a-z0-9-], at most 32) to its "
        "settings: issuer, display_name, domains, imap, smtp, sasl_mechanism, and the broker's "
        "client_id, client_secret and sign-in options (README: Adding a generic OpenID "
        "Connect provider).",
    )

    @model_validator(mode="after")
    def _one_provider_per_domain(self) -> "OidcProvidersSettings":
        domains_of(self.oidc_providers)
        return self


def domains_of(providers: dict[str, OidcProviderPublic]) -> dict[str, str]:
    """Returns address domain -> provider name; refuses a domain two providers claim."""
    owners: dict[str, str] = {}
    for name, provider in providers.items():
        for domain in provider.domains:
            if owners.setdefault(domain, name) != name:
                raise ValueError(
                    f"domain {domain} is claimed by OIDC providers {owners[domain]} and {name}"
                )
    return owners
