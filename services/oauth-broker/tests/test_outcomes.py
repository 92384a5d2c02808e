"""Whose trouble a failed token request is: the user's (final) or ours and the provider's."""

import pytest

from mailbox_link_contract.failures import FailureCode
from oauth_broker.domain.outcomes import (
    ProviderRefused,
    ProviderUnreachable,
    TokenFailure,
    classify_token_failure,
    failure_for_sign_in_error,
)


@pytest.mark.parametrize(
    ("failure", "trouble"),
    [
        # The user's grant is gone: RFC 6749's invalid_grant, OIDC's errors needing the user.
        (ProviderRefused("invalid_grant", "Token has been expired or revoked."),
         TokenFailure.USER_GRANT),
        (ProviderRefused("interaction_required", "AADSTS50076: MFA required"),
         TokenFailure.USER_GRANT),
        (ProviderRefused("consent_required", ""), TokenFailure.USER_GRANT),
        (ProviderRefused("login_required", ""), TokenFailure.USER_GRANT),
        # Microsoft's documented codes for a password change and a withdrawn consent.
        (ProviderRefused("invalid_grant", "AADSTS50173: The provided grant has expired due to "
         "it being revoked"), TokenFailure.USER_GRANT),
        (ProviderRefused("invalid_request", "AADSTS65001: The user or administrator has not "
         "consented to use the application"), TokenFailure.USER_GRANT),
        # Our app: wrong, rotated or expired client secret; the app disabled; our request.
        (ProviderRefused("invalid_client", "AADSTS7000215: Invalid client secret provided.",
                         401), TokenFailure.OUR_APP),
        (ProviderRefused("unauthorized_client", ""), TokenFailure.OUR_APP),
        (ProviderRefused("invalid_scope", ""), TokenFailure.OUR_APP),
        (ProviderRefused("something_new", ""), TokenFailure.OUR_APP),
        # The provider down.
        (ProviderRefused("server_error", "", 500), TokenFailure.PROVIDER_DOWN),
        (ProviderRefused("temporarily_unavailable", "", 503), TokenFailure.PROVIDER_DOWN),
        (ProviderRefused("http_error", "", 502), TokenFailure.PROVIDER_DOWN),
        # No answer.
        (ProviderUnreachable("token endpoint: ConnectTimeout"), TokenFailure.NETWORK),
        (ProviderUnreachable("token endpoint answered 503"), TokenFailure.NETWORK),
    ],
)  # fmt: skip
def test_token_failures_are_classified(
    failure: ProviderRefused | ProviderUnreachable, trouble: TokenFailure
) -> None:
    assert classify_token_failure(failure) is trouble
    if isinstance(failure, ProviderRefused):
        assert failure.is_final is (trouble is TokenFailure.USER_GRANT)


def test_aadsts_codes_count_only_as_whole_codes() -> None:
    # AADSTS501730 is not AADSTS50173 (a password change), nor is a code without its prefix.
    assert classify_token_failure(ProviderRefused("invalid_client", "AADSTS501730")) is (
        TokenFailure.OUR_APP
    )
    assert classify_token_failure(ProviderRefused("invalid_client", "error 50173")) is (
        TokenFailure.OUR_APP
    )


@pytest.mark.parametrize(
    ("failure", "code"),
    [
        (ProviderRefused("invalid_client", "", 401), FailureCode.DEPLOYMENT_MISCONFIGURED),
        (ProviderRefused("unauthorized_client", ""), FailureCode.DEPLOYMENT_MISCONFIGURED),
        (ProviderRefused("invalid_grant", "code expired"), FailureCode.PROVIDER_ERROR),
        (ProviderRefused("server_error", "", 500), FailureCode.PROVIDER_ERROR),
        (ProviderUnreachable("token endpoint: ConnectError"), FailureCode.PROVIDER_ERROR),
    ],
)
def test_sign_in_errors_about_our_app_say_the_deployment_is_misconfigured(
    failure: ProviderRefused | ProviderUnreachable, code: FailureCode
) -> None:
    assert failure_for_sign_in_error(failure) is code
