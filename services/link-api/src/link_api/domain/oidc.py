"""The generic OpenID Connect providers the operator configured (MBL_OIDC_PROVIDERS): which one
a link request names or its address's domain belongs to, and the servers it links to.

Plain data, no I/O: built once from the settings. A configured provider speaks for its domains'
addresses (authority `provider`): the operator runs both its sign-in and its mail servers.
"""

from collections.abc import Mapping
from dataclasses import dataclass

from link_api.domain.link_request import CannotLink, LinkPlan
from link_api.domain.providers import AuthMethod, MailSettings, Provider, Server
from mailbox_link_contract.events import Authority
from mailbox_link_shared.api_errors import ApiErrorCode
from mailbox_link_shared.oidc_providers import OidcMailServer, OidcProviderPublic, domains_of


@dataclass(frozen=True)
class OidcProvider:
    """One configured provider, as link-api uses it."""

    name: str
    title: str
    domains: tuple[str, ...]
    settings: MailSettings  # the login is always the mailbox's address

    def plan(self) -> LinkPlan:
        """How its mailboxes link: by its sign-in, on its servers, which speak for the address
        because the operator runs both."""
        return LinkPlan(
            Provider.OIDC, AuthMethod.OAUTH, self.settings, Authority.PROVIDER, self.name
        )


@dataclass(frozen=True)
class OidcCatalogue:
    """Every configured provider by name, and by the address domains it serves."""

    providers: Mapping[str, OidcProvider]
    by_domain: Mapping[str, str]

    @classmethod
    def of(cls, configured: Mapping[str, OidcProviderPublic]) -> "OidcCatalogue":
        """Returns the catalogue of the settings' MBL_OIDC_PROVIDERS."""
        providers = {
            name: OidcProvider(
                name,
                found.title(name),
                found.domains,
                MailSettings(_server(found.imap), _server(found.smtp)),
            )
            for name, found in configured.items()
        }
        return cls(providers, domains_of(dict(configured)))

    @classmethod
    def empty(cls) -> "OidcCatalogue":
        """No provider configured."""
        return cls({}, {})

    def for_address(self, address: str) -> OidcProvider | None:
        """Returns the provider whose domains include the (normalized) address's."""
        name = self.by_domain.get(address.rpartition("@")[2].lower())
        return self.providers[name] if name is not None else None

    def choose(
        self,
        address: str,
        provider: Provider | None,
        oidc_provider: str | None,
        auth: AuthMethod | None,
        has_password: bool,
    ) -> OidcProvider | None:
        """Returns the provider a request without servers links through, or None when it is
        not an OIDC link; refuses a request that names one wrongly, naming the field."""
        if oidc_provider is not None and provider not in (None, Provider.OIDC):
            raise CannotLink(
                ApiErrorCode.INVALID_REQUEST, "oidc_provider goes only with provider oidc.",
                "oidc_provider", 'omit it, or set provider to "oidc"',
            )  # fmt: skip
        if provider is None and oidc_provider is None:
            chosen = self.for_address(address)  # detection: the operator's domains first
        elif oidc_provider is None and provider is not Provider.OIDC:
            return None
        else:
            chosen = self._named(oidc_provider, address)
        if chosen is None:
            return None
        if has_password or auth is AuthMethod.PASSWORD:
            field = "password" if has_password else "auth"
            raise CannotLink(
                ApiErrorCode.OAUTH_REQUIRED,
                f"{chosen.title} mailboxes link only by signing in; passwords are not accepted.",
                field, f"omit {field} to sign in with {chosen.title}",
            )  # fmt: skip
        return chosen

    def _named(self, name: str | None, address: str) -> OidcProvider:
        if name is None:
            by_domain = self.for_address(address)
            if by_domain is not None:
                return by_domain
        found = self.providers.get(name) if name is not None else None
        if found is None:
            known = ", ".join(sorted(self.providers)) or "none is configured"
            raise CannotLink(
                ApiErrorCode.INVALID_REQUEST,
                "This deployment has no OpenID Connect provider of that name."
                if name is not None
                else "Name the OpenID Connect provider to sign in with.",
                "oidc_provider",
                f"use one of GET /v1/providers (provider oidc): {known}",
            )
        return found


def _server(server: OidcMailServer) -> Server:
    return Server(server.host, server.port, server.security)
