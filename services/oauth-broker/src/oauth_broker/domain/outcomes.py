"""How a sign-in or a refresh can go wrong, in the contract's failure codes."""

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
        """True when retrying cannot help: the grant was revoked, expired or never valid."""
        return self.error in ("invalid_grant", "unauthorized_client", "invalid_client")


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
