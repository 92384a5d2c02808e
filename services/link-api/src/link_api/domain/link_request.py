"""A validated request to link a mailbox, in normalized form, and the rules for how it links."""

import hashlib
import json
from dataclasses import dataclass

from link_api.domain.providers import (
    OAUTH_PROVIDER_TYPES,
    AuthMethod,
    MailSettings,
    Provider,
    ProviderInfo,
)
from mailbox_link_contract.events import Authority, MailboxOwner, ProviderType, ServerSettings
from mailbox_link_shared.api_errors import ApiErrorCode
from mailbox_link_shared.credentials import MailboxCredentials


@dataclass(frozen=True)
class LinkRequest:
    """Everything needed to verify and link one mailbox, already validated and normalized.

    A password link carries the passwords; an OAuth link carries none (the user signs in at
    the provider), and its servers are the provider's own.
    """

    owner: MailboxOwner
    address: str
    provider: ProviderType
    imap: ServerSettings
    smtp: ServerSettings
    credentials: MailboxCredentials | None
    auth: AuthMethod = AuthMethod.PASSWORD
    # Why the servers speak for the address (domain/authority.py). The default is the weakest
    # on purpose: a request whose authority was never decided must prove ownership.
    authority: Authority = Authority.OWNERSHIP_PROOF
    oidc_provider: str | None = None  # provider oidc: the configured provider's name
    # The user asks to reconnect their linked mailbox in place (the registry decides).
    reconnect: bool = False

    def __post_init__(self) -> None:
        # The event contract refuses the other combinations; fail here, before anything is stored.
        if (self.auth is AuthMethod.PASSWORD) != (self.credentials is not None):
            raise ValueError("a password link carries credentials and an oauth link none")

    def fingerprint(self) -> str:
        """Identifies the request's non-secret content, to tell a retry from a different request."""
        content: dict[str, object] = {
            "owner": self.owner.model_dump(),
            "address": self.address,
            "provider": self.provider.value,
            "auth": self.auth.value,
            "imap": self.imap.model_dump(mode="json"),
            "smtp": self.smtp.model_dump(mode="json"),
        }
        if self.oidc_provider is not None:
            content["oidc_provider"] = self.oidc_provider
        if self.reconnect:  # only when set: fingerprints of earlier requests stay as they were
            content["reconnect"] = True
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()

    def in_flight_key(self) -> str:
        """Names 'this user linking this mailbox', of which only one may be under way at a time."""
        return in_flight_key(self.owner, self.address)


def in_flight_key(owner: MailboxOwner, address: str) -> str:
    """The in-flight key of a user's link to an address (a stored link's too)."""
    return f"{owner.account_id}\x1f{owner.user_id}\x1f{address}"


class CannotLink(Exception):
    """The request cannot become a link as given: a code, a sentence, the field and its fix."""

    def __init__(self, code: ApiErrorCode, message: str, field: str, fix: str) -> None:
        super().__init__(message)
        self.code, self.message, self.field, self.fix = code, message, field, fix


@dataclass(frozen=True)
class LinkPlan:
    """How a mailbox given without servers links: who hosts it, how we log in, its servers,
    and why those servers speak for the address."""

    provider: Provider
    auth: AuthMethod
    settings: MailSettings
    authority: Authority = Authority.OWNERSHIP_PROOF
    oidc_provider: str | None = None  # provider OIDC: the configured provider's name

    @property
    def provider_type(self) -> ProviderType:
        """Who verifies the link: the OAuth broker for this provider, or the IMAP verifier."""
        if self.provider is Provider.OIDC:
            return ProviderType.OIDC
        if self.auth is AuthMethod.OAUTH:
            return OAUTH_PROVIDER_TYPES[self.provider]
        return ProviderType.IMAP


def auth_for(info: ProviderInfo | None, asked: AuthMethod | None, has_password: bool) -> AuthMethod:
    """Returns how a mailbox of this provider (None: not known) links, or refuses the request.

    Unless the caller asks for a method, a password means a password link, and no password
    means the provider's sign-in where it has one.
    """
    methods = info.auth_methods if info is not None else (AuthMethod.PASSWORD,)
    if asked is not None:
        wanted = asked
    elif has_password or AuthMethod.OAUTH not in methods:
        wanted = AuthMethod.PASSWORD
    else:
        wanted = AuthMethod.OAUTH
    if wanted not in methods:
        raise _not_offered(info, wanted, has_password)
    if wanted is AuthMethod.OAUTH and has_password:
        raise CannotLink(
            ApiErrorCode.INVALID_REQUEST, "A link that signs in at the provider takes no password.",
            "password", 'omit the password, or set auth to "password" to link with it',
        )  # fmt: skip
    return wanted


def _not_offered(info: ProviderInfo | None, wanted: AuthMethod, has_password: bool) -> CannotLink:
    if info is None:
        with_sign_in = ", ".join(OAUTH_PROVIDER_TYPES)
        return CannotLink(
            ApiErrorCode.OAUTH_NOT_SUPPORTED,
            "We could not tell who hosts this mailbox; only some providers link by signing in.",
            "auth",
            f"set provider ({with_sign_in}) if the mailbox is there; "
            "otherwise omit auth and give the password",
        )
    if wanted is AuthMethod.PASSWORD:
        # Microsoft: passwords no longer work over IMAP or SMTP, whatever the user types.
        field, fix = (
            ("password", f"omit the password to sign in with {info.name}")
            if has_password
            else ("auth", f'omit auth, or set it to "oauth", to sign in with {info.name}')
        )
        message = f"{info.name} mailboxes link only by signing in; passwords are not accepted."
        return CannotLink(ApiErrorCode.OAUTH_REQUIRED, message, field, fix)
    methods = " or ".join(m.value for m in info.auth_methods)
    who = "This IMAP server" if info.provider is Provider.IMAP else info.name
    return CannotLink(
        ApiErrorCode.OAUTH_NOT_SUPPORTED,
        f"{who} links with {methods} only, not by signing in at the provider.",
        "auth",
        'omit auth, or set it to "password", and give the password'
        + (f" (an app password: {info.app_password_url})" if info.app_password_url else ""),
    )
