"""The OAuth providers mailboxes link through: endpoints, scopes, and what each one offers.

The endpoints and scopes here are the real providers' defaults; an operator supplies only the
client credentials and the redirect URI, and may override any endpoint (tests point them at a
local authorization server). Generic OpenID Connect providers (MBL_OIDC_PROVIDERS) have no
defaults: their endpoints come from discovery, their options from the configuration.

A provider is named by its key: the ProviderType's value for the built-in ones ("google"), and
"oidc:<name>" for a configured OpenID Connect provider.
"""

# ruff: noqa: S106 - "token_url" names an endpoint, not a secret

from dataclasses import dataclass
from enum import StrEnum

from mailbox_link_contract.events import ProviderType


class MailboxProfile(StrEnum):
    """Where the broker reads which mailbox the user signed in to."""

    GMAIL = "gmail"  # OIDC userinfo, then the Gmail profile (fails when Gmail is turned off)
    GRAPH = "graph"  # Microsoft Graph /me: the primary SMTP address and the UPN
    USERINFO = "userinfo"  # OIDC userinfo's verified email (Yahoo, AOL)


class OfflineAccess(StrEnum):
    """How a provider is asked for a refresh token (lasting access)."""

    SCOPE = "offline_access"  # OIDC Core 11: the offline_access scope, with prompt=consent
    ACCESS_TYPE = "access_type"  # Google: access_type=offline (with prompt=consent)
    GRANTED = "granted"  # nothing to ask: the provider grants one anyway (Yahoo, AOL)


class TokenAuthMethod(StrEnum):
    """How the token endpoint authenticates our app (RFC 6749 2.3.1)."""

    BASIC = "client_secret_basic"  # form-encoded id and secret in HTTP Basic
    POST = "client_secret_post"  # id and secret in the form body


# A plain str, so a ProviderType (a StrEnum) is its built-in provider's key as it is.
ProviderKey = str


def oidc_key(name: str) -> ProviderKey:
    """Returns the key of the configured OpenID Connect provider `name`."""
    return f"{ProviderType.OIDC.value}:{name}"


def provider_key(provider: ProviderType, oidc_provider: str | None) -> ProviderKey:
    """Returns the key a link's provider client is found by."""
    if provider is ProviderType.OIDC:
        return oidc_key(oidc_provider or "")
    return provider.value


# Authorize parameters the broker sets itself: extra parameters may not replace them.
RESERVED_AUTHORIZE_PARAMS = frozenset(
    {
        "client_id", "response_type", "redirect_uri", "scope", "state", "nonce",
        "code_challenge", "code_challenge_method", "login_hint", "request", "request_uri",
        "response_mode", "prompt", "access_type",
    }
)  # fmt: skip


@dataclass(frozen=True)
class ProviderEndpoints:
    """One provider's OAuth endpoints and scopes."""

    authorize_url: str
    token_url: str
    userinfo_url: str
    jwks_url: str
    # None for Microsoft's multi-tenant endpoint, whose issuer names the user's tenant: the
    # id token's signature, audience and nonce are still checked.
    issuer: str | None
    revocation_url: str | None  # None where the provider offers no revocation
    profile: MailboxProfile
    profile_url: str | None
    scopes: tuple[str, ...]  # asked for at sign-in
    mail_scopes: tuple[str, ...]  # without these we cannot read or send: scope_missing
    authorize_params: tuple[tuple[str, str], ...] = ()
    # Microsoft issues a token per resource: the mail token comes from the code, and Graph's
    # token for /me from the refresh token with these scopes.
    profile_scopes: tuple[str, ...] = ()
    token_scopes: tuple[str, ...] = ()
    # The sign-in's prompt (None: "consent" when offline access is asked for; "": none), how
    # lasting access is asked for, the token endpoint's client authentication (None: as
    # discovery says, else client_secret_basic), what discovery advertises, and whether an id
    # token must come back even without `openid` (with it, one always must).
    prompt: str | None = None
    offline_access: OfflineAccess = OfflineAccess.GRANTED
    token_auth_method: TokenAuthMethod | None = None
    token_auth_methods_supported: tuple[str, ...] = ()
    iss_parameter_supported: bool = False  # RFC 9207: callbacks carry `iss`
    require_id_token: bool = False
    # Which userinfo claim is the mailbox's address (MailboxProfile.USERINFO).
    email_claim: str = "email"

    @property
    def requested_scopes(self) -> tuple[str, ...]:
        """The scopes asked for at sign-in: OIDC Core 11's offline_access is added when that
        is how this provider grants lasting access."""
        if self.offline_access is OfflineAccess.SCOPE and "offline_access" not in self.scopes:
            return (*self.scopes, "offline_access")
        return self.scopes

    @property
    def needs_id_token(self) -> bool:
        """True when the code exchange must return an id token (checked, nonce included):
        whenever `openid` is asked for (RFC 9700 2.1.1, OIDC Core 3.1.3.3), or as configured."""
        return self.require_id_token or "openid" in self.requested_scopes

    def sign_in_params(self) -> tuple[tuple[str, str], ...]:
        """The authorize parameters besides OAuth's and PKCE's own: how lasting access is
        asked for, the prompt, then the provider's extra parameters."""
        params: list[tuple[str, str]] = []
        if self.offline_access is OfflineAccess.ACCESS_TYPE:
            params.append(("access_type", "offline"))
        prompt = self.prompt
        if prompt is None and self.offline_access is not OfflineAccess.GRANTED:
            # OIDC Core 11: offline_access is honoured only after a consent just shown;
            # Google likewise grants a refresh token only then.
            prompt = "consent"
        if prompt:
            params.append(("prompt", prompt))
        taken = {name for name, _ in params}
        params.extend((name, value) for name, value in self.authorize_params if name not in taken)
        return tuple(params)


GOOGLE = ProviderEndpoints(
    authorize_url="https://accounts.google.com/o/oauth2/v2/auth",
    token_url="https://oauth2.googleapis.com/token",
    userinfo_url="https://openidconnect.googleapis.com/v1/userinfo",
    jwks_url="https://www.googleapis.com/oauth2/v3/certs",
    issuer="https://accounts.google.com",
    revocation_url="https://oauth2.googleapis.com/revoke",
    profile=MailboxProfile.GMAIL,
    profile_url="https://gmail.googleapis.com/gmail/v1/users/me/profile",
    scopes=("openid", "email", "https://mail.google.com/"),
    mail_scopes=("https://mail.google.com/",),
    # access_type=offline + prompt=consent: Google only grants a refresh token on a consent
    # it just showed.
    offline_access=OfflineAccess.ACCESS_TYPE,
    prompt="consent",
)

_OUTLOOK_MAIL = (
    "https://outlook.office.com/IMAP.AccessAsUser.All",
    "https://outlook.office.com/SMTP.Send",
)
MICROSOFT = ProviderEndpoints(
    authorize_url="https://login.microsoftonline.com/common/oauth2/v2.0/authorize",
    token_url="https://login.microsoftonline.com/common/oauth2/v2.0/token",
    userinfo_url="https://graph.microsoft.com/oidc/userinfo",
    jwks_url="https://login.microsoftonline.com/common/discovery/v2.0/keys",
    issuer=None,
    revocation_url=None,
    profile=MailboxProfile.GRAPH,
    profile_url="https://graph.microsoft.com/v1.0/me",
    scopes=("openid", "email", "offline_access", "User.Read", *_OUTLOOK_MAIL),
    mail_scopes=_OUTLOOK_MAIL,
    # offline_access is among the scopes: Microsoft grants a refresh token without a consent
    # prompt; select_account lets a user with several accounts pick the mailbox's.
    offline_access=OfflineAccess.SCOPE,
    prompt="select_account",
    profile_scopes=("User.Read",),
    token_scopes=("openid", "offline_access", *_OUTLOOK_MAIL),
)


def _yahoo_login(host: str) -> ProviderEndpoints:
    """Yahoo and AOL share one login platform; only the host differs."""
    return ProviderEndpoints(
        authorize_url=f"https://{host}/oauth2/request_auth",
        token_url=f"https://{host}/oauth2/get_token",
        userinfo_url=f"https://{host}/openid/v1/userinfo",
        jwks_url=f"https://{host}/openid/v1/certs",
        issuer=f"https://{host}",
        revocation_url=None,
        profile=MailboxProfile.USERINFO,
        profile_url=None,
        scopes=("openid", "email", "mail-w"),
        mail_scopes=("mail-w",),
        # Yahoo grants a refresh token with every code; its documentation asks for a login.
        offline_access=OfflineAccess.GRANTED,
        prompt="login",
    )


YAHOO = _yahoo_login("api.login.yahoo.com")
AOL = _yahoo_login("api.login.aol.com")

DEFAULT_ENDPOINTS: dict[ProviderType, ProviderEndpoints] = {
    ProviderType.GOOGLE: GOOGLE,
    ProviderType.MICROSOFT: MICROSOFT,
    ProviderType.YAHOO: YAHOO,
    ProviderType.AOL: AOL,
}
OAUTH_PROVIDERS = frozenset(DEFAULT_ENDPOINTS)
