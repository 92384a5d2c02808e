"""The OAuth providers mailboxes link through: endpoints, scopes, and what each one offers.

The endpoints and scopes here are the real providers' defaults; an operator supplies only the
client credentials and the redirect URI, and may override any endpoint (tests point them at a
local authorization server).
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
    # Issue 14 (filled in by the generic OIDC provider work): the sign-in's prompt, how lasting
    # access is asked for, the token endpoint's client authentication (None: as discovery
    # says, else client_secret_basic), what discovery advertises, and whether an id token
    # must come back.
    prompt: str | None = None
    offline_access: OfflineAccess = OfflineAccess.GRANTED
    token_auth_method: TokenAuthMethod | None = None
    token_auth_methods_supported: tuple[str, ...] = ()
    iss_parameter_supported: bool = False  # RFC 9207: callbacks carry `iss`
    require_id_token: bool = False


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
    # offline + consent: Google only grants a refresh token on a consent it just showed.
    authorize_params=(("access_type", "offline"), ("prompt", "consent")),
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
    authorize_params=(("prompt", "select_account"),),
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
        authorize_params=(("prompt", "login"),),
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
