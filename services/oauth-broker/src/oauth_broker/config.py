"""Settings of the OAuth broker: our app at each provider, and how the sign-in behaves."""

import ssl
from datetime import timedelta
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from mailbox_link_contract.events import ProviderType
from mailbox_link_contract.topics import OAUTH_BROKER
from mailbox_link_contract.values import ConnectionSecurity
from mailbox_link_shared.oidc_providers import OidcProviderName, OidcProviderPublic
from mailbox_link_shared.scopes import Scope
from mailbox_link_shared.settings import (
    ENV_PREFIX,
    CallerKeySettings,
    MailCheckSettings,
    MongoSettings,
    ServiceSettings,
    tls_context,
)
from oauth_broker.domain.grants import FIRST_REFRESH_RETRY, MAX_REFRESH_RETRY, RefreshBackoff
from oauth_broker.domain.providers import (
    RESERVED_AUTHORIZE_PARAMS,
    OfflineAccess,
    ProviderKey,
    TokenAuthMethod,
    oidc_key,
)

SERVICE_NAME = OAUTH_BROKER  # the catalogue's name: consumer group and producer


def _no_reserved_params(params: dict[str, str]) -> dict[str, str]:
    """Extra authorize parameters may not replace the ones the sign-in's security rests on."""
    reserved = sorted(RESERVED_AUTHORIZE_PARAMS & set(params))
    if reserved:
        raise ValueError(
            f"authorize_params may not set {', '.join(reserved)}: the broker sets them; use "
            "prompt, scopes or offline_access for what they control"
        )
    return params


class MailServerIn(BaseModel):
    """A mail server to check OAuth mailboxes on, instead of the provider's usual one."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str
    port: int = Field(ge=1, le=65535)
    security: ConnectionSecurity


class ProviderSettings(BaseModel):
    """Our registered app at one provider. Endpoints default to the real provider's.

    Set in the environment as MBL_OAUTH_<PROVIDER>__<FIELD>, e.g. MBL_OAUTH_GOOGLE__CLIENT_ID.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    client_id: str = ""
    client_secret: SecretStr = SecretStr("")
    # Only when this provider's app uses another callback than MBL_OAUTH_REDIRECT_URI.
    redirect_uri: str | None = None
    # The provider's OpenID discovery document; its endpoints override the defaults.
    discovery_url: str | None = None
    authorize_url: str | None = None
    token_url: str | None = None
    userinfo_url: str | None = None
    jwks_url: str | None = None
    issuer: str | None = None
    revocation_url: str | None = None
    profile_url: str | None = None
    scopes: list[str] | None = None
    imap: MailServerIn | None = None
    smtp: MailServerIn | None = None
    # The sign-in options (issue 14); None keeps the provider's documented default. An empty
    # prompt sends none.
    prompt: str | None = None
    authorize_params: dict[str, str] | None = None
    offline_access: OfflineAccess | None = None
    token_endpoint_auth_method: TokenAuthMethod | None = None
    require_id_token: bool | None = None

    @field_validator("authorize_params")
    @classmethod
    def _params(cls, params: dict[str, str] | None) -> dict[str, str] | None:
        return None if params is None else _no_reserved_params(params)

    @property
    def configured(self) -> bool:
        """True once the operator supplied the app's credentials."""
        return bool(self.client_id and self.client_secret.get_secret_value())


class OidcProviderSettings(OidcProviderPublic):
    """A generic OpenID Connect provider, as the broker reads it from MBL_OIDC_PROVIDERS:
    the shared part (issuer, servers, SASL mechanism) plus our app there and the sign-in
    options. The secret is best given alone: MBL_OIDC_PROVIDERS__<NAME>__CLIENT_SECRET."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    discovery_url: str | None = Field(
        default=None, description="Default: the issuer + /.well-known/openid-configuration."
    )
    client_id: str = ""
    client_secret: SecretStr = SecretStr("")
    redirect_uri: str | None = None
    scopes: tuple[str, ...] = ("openid", "email", "offline_access")
    mail_scopes: tuple[str, ...] = ()
    prompt: str | None = Field(
        default=None,
        description='Default: "consent" when offline access is asked for (offline_access or '
        'access_type); "" sends no prompt.',
    )
    authorize_params: dict[str, str] = Field(default_factory=dict)
    offline_access: OfflineAccess = OfflineAccess.SCOPE
    token_endpoint_auth_method: TokenAuthMethod | None = Field(
        default=None, description="None: the first the discovery document supports."
    )
    require_id_token: bool = True
    email_claim: str = Field(default="email", min_length=1, max_length=64)

    @field_validator("authorize_params")
    @classmethod
    def _params(cls, params: dict[str, str]) -> dict[str, str]:
        return _no_reserved_params(params)

    @model_validator(mode="after")
    def _id_token_needs_openid(self) -> "OidcProviderSettings":
        if self.require_id_token and "openid" not in self.scopes:
            raise ValueError(
                'an id token comes only with the "openid" scope: add it to scopes, or set '
                "require_id_token to false"
            )
        return self

    @property
    def configured(self) -> bool:
        """True once the operator supplied the app's credentials."""
        return bool(self.client_id and self.client_secret.get_secret_value())

    @property
    def discovery_document_url(self) -> str:
        """Where the provider's discovery document is (OpenID Discovery 4)."""
        return self.discovery_url or f"{self.issuer.rstrip('/')}/.well-known/openid-configuration"


# The scope a service key needs to confirm a sign-in: the product's backend, which knows who is
# signed in to the product; not link-api or the sign-in service, which share MBL_SERVICE_KEYS.
CONFIRM_SCOPE = Scope.SIGN_IN_CONFIRM


class Settings(ServiceSettings, MongoSettings, MailCheckSettings, CallerKeySettings):
    """Everything the broker reads from the environment (MBL_*)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="ignore", frozen=True
    )

    http_host: str = "127.0.0.1"
    http_port: int = 8083
    oauth_redirect_uri: str = Field(
        default="http://127.0.0.1:8083/v1/oauth/callback",
        description="The callback URL registered with every provider: this service's "
        "/v1/oauth/callback as browsers reach it (HTTPS in production).",
    )
    oauth_return_url: str | None = Field(
        default=None,
        description="The product's page to send the browser to after the callback (with "
        "link_id, result, error, and for a verified sign-in the one-time code its backend "
        "confirms); without it the broker shows a page with the code (ADR 0014).",
    )
    service_keys: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="JSON object of calling service name to its bearer token: who may confirm "
        "sign-ins (the product's backend); empty: no sign-in can be confirmed.",
    )
    service_key_scopes: dict[str, list[Scope]] = Field(
        default_factory=dict,
        description="JSON object of calling service name to its scopes: only a key granted "
        f"'{CONFIRM_SCOPE}' (the product's backend) may confirm sign-ins (ADR 0014), e.g. "
        f'{{"product": ["{CONFIRM_SCOPE}"]}}',
    )
    oauth_start_url: str | None = Field(
        default=None,
        description="The broker's /v1/oauth/start as browsers reach it; default: next to "
        "MBL_OAUTH_REDIRECT_URI.",
    )
    oauth_confirm_ttl_seconds: float = Field(
        default=600, gt=0, description="How long the product has to confirm a sign-in."
    )
    oauth_google: ProviderSettings = ProviderSettings()
    oauth_microsoft: ProviderSettings = ProviderSettings()
    oauth_yahoo: ProviderSettings = ProviderSettings()
    oauth_aol: ProviderSettings = ProviderSettings()
    oidc_providers: dict[OidcProviderName, OidcProviderSettings] = Field(
        default_factory=dict,
        description="JSON object of OpenID Connect provider name to its settings (shared with "
        "link-api); secrets best as MBL_OIDC_PROVIDERS__<NAME>__CLIENT_SECRET.",
    )
    oauth_ca_file: str | None = Field(
        default=None, description="Extra CA certificates (PEM) to trust for provider endpoints."
    )
    oauth_timeout_seconds: float = Field(default=10.0, gt=0, le=60)
    oauth_session_ttl_seconds: float = Field(
        default=600, gt=0, description="How long a sign-in URL works."
    )
    oauth_refresh_margin_seconds: float = Field(
        default=300, ge=0, description="Refresh an access token this long before it expires."
    )
    oauth_refresh_retry_seconds: float = Field(
        default=FIRST_REFRESH_RETRY.total_seconds(),
        gt=0,
        description="After a refresh failed by no fault of the user (our app refused, the "
        "provider down or unreachable), wait this long before the next try; doubled with each "
        "failure in a row up to MBL_OAUTH_REFRESH_RETRY_MAX_SECONDS.",
    )
    oauth_refresh_retry_max_seconds: float = Field(
        default=MAX_REFRESH_RETRY.total_seconds(),
        gt=0,
        description="The longest wait between two refresh tries of one grant.",
    )
    housekeeping_interval_seconds: float = Field(default=10.0, gt=0)
    oauth_provider_retry_seconds: float = Field(
        default=60.0,
        gt=0,
        description="How often a configured provider that could not be loaded (its discovery "
        "unreachable or refused) is tried again.",
    )

    def providers(self) -> dict[ProviderType, ProviderSettings]:
        """Returns the settings of each provider whose app credentials are configured."""
        every = {
            ProviderType.GOOGLE: self.oauth_google,
            ProviderType.MICROSOFT: self.oauth_microsoft,
            ProviderType.YAHOO: self.oauth_yahoo,
            ProviderType.AOL: self.oauth_aol,
        }
        return {name: settings for name, settings in every.items() if settings.configured}

    def oidc(self) -> dict[ProviderKey, tuple[str, OidcProviderSettings]]:
        """Returns each configured OpenID Connect provider by its key ("oidc:<name>"), with
        its name; one without client credentials is left out (and logged by bootstrap)."""
        return {oidc_key(name): (name, found) for name, found in self.oidc_providers.items()}

    def oauth_tls(self) -> ssl.SSLContext:
        """Returns a verifying TLS context for provider endpoints."""
        return tls_context(self.oauth_ca_file)

    @property
    def session_lifetime(self) -> timedelta:
        """How long a sign-in URL works."""
        return timedelta(seconds=self.oauth_session_ttl_seconds)

    @property
    def start_url(self) -> str:
        """Where AuthorizationRequired sends browsers: <this>/<start token>."""
        if self.oauth_start_url:
            return self.oauth_start_url.rstrip("/")
        parts = urlsplit(self.oauth_redirect_uri)
        return f"{parts.scheme}://{parts.netloc}/v1/oauth/start"

    @property
    def secure_cookie(self) -> bool:
        """False only when the callback is plain http (local runs): browsers drop Secure
        cookies there."""
        return urlsplit(self.oauth_redirect_uri).scheme != "http"

    @property
    def confirm_lifetime(self) -> timedelta:
        """How long a verified sign-in waits for the product's confirmation."""
        return timedelta(seconds=self.oauth_confirm_ttl_seconds)

    @property
    def refresh_backoff(self) -> RefreshBackoff:
        """How failed refreshes that were not the user's are spaced."""
        return RefreshBackoff(
            timedelta(seconds=self.oauth_refresh_retry_seconds),
            timedelta(seconds=self.oauth_refresh_retry_max_seconds),
        )

    @property
    def refresh_margin(self) -> timedelta:
        """How early tokens are refreshed."""
        return timedelta(seconds=self.oauth_refresh_margin_seconds)
