"""How a sign-in or a refresh can go wrong, in the contract's failure codes, and whose
trouble it is: the user's (for good) or ours and the provider's (worth another try)."""

import re
from enum import StrEnum

from mailbox_link_contract.failures import FailureCode


class AuthorizationFailed(Exception):
    """The sign-in did not give us a mailbox we can use; the code says why."""

    def __init__(self, code: FailureCode, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


class ProviderRefused(Exception):
    """The provider answered with an OAuth error (RFC 6749 section 5.2) or an HTTP error."""

    def __init__(self, error: str, description: str = "", status: int = 400) -> None:
        super().__init__(f"{error}: {description}" if description else error)
        self.error = error
        self.description = description
        self.status = status

    @property
    def is_final(self) -> bool:
        """True when the user's grant is gone for good (revoked, expired, password changed):
        only the user can mend it by signing in again."""
        return classify_token_failure(self) is TokenFailure.USER_GRANT


class ProviderUnreachable(Exception):
    """The provider did not answer (network, TLS, timeout, or a 5xx); worth another try."""


# What the provider's error parameter on the callback means for the user.
CALLBACK_ERRORS = {
    "access_denied": FailureCode.CONSENT_DENIED,
    "consent_required": FailureCode.CONSENT_DENIED,
    "interaction_required": FailureCode.CONSENT_DENIED,
}


def failure_for_callback_error(error: str) -> FailureCode:
    """Returns the failure code for an error the provider sent the browser back with."""
    return CALLBACK_ERRORS.get(error, FailureCode.PROVIDER_ERROR)


class TokenFailure(StrEnum):
    """Whose trouble a failed token request (refresh or code exchange) is."""

    # The user's grant is gone (revoked, expired, password changed, consent withdrawn): final,
    # the mailbox needs a reconnect.
    USER_GRANT = "user_grant"
    # The provider refused our app itself (client id or secret wrong, rotated or expired; the
    # app disabled) or our request: the operators' to fix; the user's grant is still good.
    OUR_APP = "our_app"
    # The provider failed (5xx, server_error, temporarily_unavailable): it will pass.
    PROVIDER_DOWN = "provider_down"
    # No usable answer (DNS, connection, TLS, timeout, or a 5xx without an OAuth error): it
    # will pass.
    NETWORK = "network"


# RFC 6749 5.2 says invalid_grant for a refresh token that is "invalid, expired, revoked";
# OIDC Core 3.1.2.6 adds the errors that need the user at the provider again (Microsoft
# answers a refresh with them when MFA or conditional access wants a new sign-in).
_USER_ERRORS = frozenset(
    {"invalid_grant", "interaction_required", "login_required", "consent_required"}
)
_SERVER_ERRORS = frozenset({"server_error", "temporarily_unavailable"})
# RFC 6749 5.2: the provider does not accept our app's own credentials or lets it not use
# this grant type; only the deployment's operators can mend it.
_APP_CREDENTIAL_ERRORS = frozenset({"invalid_client", "unauthorized_client"})
# Microsoft Entra ID's documented AADSTS codes (in error_description) that mean the user's
# grant is gone whatever the error field says: password changed or reset (50173, 50133),
# refresh token expired or revoked (70008, 700082, 70043, 700084), consent missing or
# withdrawn (65001), MFA or a new sign-in needed (50076, 50079, 50078).
_MICROSOFT_USER_CODES = frozenset(
    {"50173", "50133", "70008", "700082", "70043", "700084", "65001", "50076", "50079", "50078"}
)
_AADSTS = re.compile(r"\bAADSTS(\d+)\b")


def classify_token_failure(failure: ProviderRefused | ProviderUnreachable) -> TokenFailure:
    """Says whose trouble a failed token request is; only USER_GRANT may flag a mailbox.

    Anything not known to be the user's counts as ours or the provider's: a mailbox is never
    flagged for good on a guess, its refresh is retried with back-off instead.
    """
    if isinstance(failure, ProviderUnreachable):
        return TokenFailure.NETWORK
    codes = set(_AADSTS.findall(failure.description))
    if failure.error in _USER_ERRORS or codes & _MICROSOFT_USER_CODES:
        return TokenFailure.USER_GRANT
    if failure.error in _SERVER_ERRORS or failure.status >= 500:
        return TokenFailure.PROVIDER_DOWN
    # _APP_CREDENTIAL_ERRORS, and our request's own faults (invalid_request, invalid_scope,
    # unsupported_grant_type) or an error nobody documented.
    return TokenFailure.OUR_APP


def failure_for_sign_in_error(failure: ProviderRefused | ProviderUnreachable) -> FailureCode:
    """The failure code of a provider error during a sign-in: deployment_misconfigured when
    the provider refused our app's credentials (the user can do nothing about it), else
    provider_error (worth another try)."""
    if isinstance(failure, ProviderRefused) and failure.error in _APP_CREDENTIAL_ERRORS:
        return FailureCode.DEPLOYMENT_MISCONFIGURED
    return FailureCode.PROVIDER_ERROR
