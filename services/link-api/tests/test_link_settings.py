"""How a link without typed servers is made: its provider, its servers (the provider's or
detected ones) and how we log in (a password or the provider's sign-in)."""

import pytest

from link_api.domain.link_request import CannotLink
from link_api.domain.providers import (
    PROVIDERS,
    AuthMethod,
    Detection,
    Evidence,
    MailSettings,
    Provider,
    Server,
)
from link_api.entrypoints.schemas import app_password
from link_api.handlers import plan_link, settings_for
from mailbox_link_contract.values import ConnectionSecurity

DISCOVERED = MailSettings(
    Server("imap.smallisp.net", 993, ConnectionSecurity.SSL),
    Server("smtp.smallisp.net", 587, ConnectionSecurity.STARTTLS),
)


class FixedDetector:
    """Answers every detection with the same result and counts the questions."""

    def __init__(self, detection: Detection) -> None:
        self.detection = detection
        self.asked = 0

    async def detect(self, address: str) -> Detection:
        self.asked += 1
        return self.detection


def _detected(
    provider: Provider, settings: MailSettings | None, reason: str | None = None
) -> Detection:
    return Detection(
        "smallisp.net", provider, "high", (Evidence("srv", "x"),), settings, reason=reason
    )


def _detected_as(provider: Provider) -> Detection:
    """What detection answers for a mailbox at one of the catalogue's providers."""
    return _detected(provider, PROVIDERS[provider].settings)


OAUTH, PASSWORD = AuthMethod.OAUTH, AuthMethod.PASSWORD


def test_app_passwords_lose_the_spaces_providers_print_them_with() -> None:
    assert app_password(Provider.GOOGLE, "abcd efgh ijkl mnop") == "abcdefghijklmnop"
    assert app_password(Provider.ICLOUD, " abcd-efgh-ijkl-mnop ") == "abcd-efgh-ijkl-mnop"
    assert app_password(Provider.IMAP, "pass phrase with spaces") == "pass phrase with spaces"


async def test_detected_imap_settings_are_used() -> None:
    detector = FixedDetector(_detected(Provider.IMAP, DISCOVERED))
    provider, settings = await settings_for("erin@smallisp.net", None, detector)
    assert (provider, settings) == (Provider.IMAP, DISCOVERED)


async def test_an_explicit_provider_wins_without_asking_detection() -> None:
    detector = FixedDetector(_detected(Provider.UNKNOWN, None))
    provider, settings = await settings_for("me@example.org", Provider.ICLOUD, detector)
    assert provider is Provider.ICLOUD
    assert settings == PROVIDERS[Provider.ICLOUD].settings
    assert detector.asked == 0


@pytest.mark.parametrize(
    "provider", [Provider.GOOGLE, Provider.MICROSOFT, Provider.YAHOO, Provider.AOL]
)
@pytest.mark.parametrize("asked", [None, OAUTH], ids=["auth-omitted", "auth-oauth"])
async def test_without_a_password_a_provider_with_sign_in_links_by_oauth(
    provider: Provider, asked: AuthMethod | None
) -> None:
    plan = await plan_link(
        "x@smallisp.net", None, asked, False, FixedDetector(_detected_as(provider))
    )
    assert (plan.provider, plan.auth) == (provider, OAUTH)
    assert plan.provider_type.value == provider.value
    assert plan.settings == PROVIDERS[provider].settings


@pytest.mark.parametrize(
    "provider", [Provider.GOOGLE, Provider.YAHOO, Provider.AOL, Provider.ICLOUD]
)
async def test_with_a_password_a_provider_with_app_passwords_links_by_password(
    provider: Provider,
) -> None:
    plan = await plan_link(
        "x@smallisp.net", provider, None, True, FixedDetector(_detected_as(provider))
    )
    assert (plan.provider, plan.auth, plan.provider_type.value) == (provider, PASSWORD, "imap")
    assert plan.settings == PROVIDERS[provider].settings


async def test_an_explicit_oauth_provider_wins_over_detection() -> None:
    detector = FixedDetector(_detected(Provider.IMAP, DISCOVERED))
    plan = await plan_link("x@smallisp.net", Provider.MICROSOFT, None, False, detector)
    assert (plan.provider, plan.auth) == (Provider.MICROSOFT, OAUTH)
    assert plan.settings == PROVIDERS[Provider.MICROSOFT].settings
    assert detector.asked == 0


IMAP_FOUND = _detected(Provider.IMAP, DISCOVERED)
UNKNOWN = _detected(Provider.UNKNOWN, None)
NO_MAIL_SERVER = _detected(Provider.UNKNOWN, None, "no_mail_server")
REFUSALS = [
    # (detection, explicit provider, auth asked, has password) -> (code, field)
    (_detected_as(Provider.MICROSOFT), None, None, True, "oauth_required", "password"),
    (UNKNOWN, Provider.MICROSOFT, None, True, "oauth_required", "password"),
    (_detected_as(Provider.MICROSOFT), None, PASSWORD, False, "oauth_required", "auth"),
    (_detected_as(Provider.GOOGLE), None, OAUTH, True, "invalid_request", "password"),
    (_detected_as(Provider.ICLOUD), None, OAUTH, False, "oauth_not_supported", "auth"),
    (IMAP_FOUND, None, OAUTH, False, "oauth_not_supported", "auth"),
    (UNKNOWN, None, OAUTH, False, "oauth_not_supported", "auth"),
    (IMAP_FOUND, None, None, False, "invalid_request", "password"),
    (_detected_as(Provider.ICLOUD), None, None, False, "invalid_request", "password"),
    (_detected_as(Provider.GOOGLE), None, PASSWORD, False, "invalid_request", "password"),
    (NO_MAIL_SERVER, None, None, True, "no_mail_server", "email"),
    (UNKNOWN, None, None, True, "settings_required", "imap"),
    (UNKNOWN, None, None, False, "settings_required", "imap"),
    (UNKNOWN, Provider.IMAP, None, True, "settings_required", "imap"),
]
REFUSAL_IDS = [
    "microsoft-with-password",
    "explicit-microsoft-with-password",
    "microsoft-asked-for-password",
    "oauth-with-password",
    "oauth-at-icloud",
    "oauth-at-custom-imap",
    "oauth-at-unknown-host",
    "imap-without-password",
    "icloud-without-password",
    "google-password-asked-none-given",
    "no-mail-server",
    "servers-not-found",
    "servers-not-found-no-password",
    "explicit-imap-servers-not-found",
]


@pytest.mark.parametrize(
    ("detection", "provider", "asked", "has_password", "code", "field"), REFUSALS, ids=REFUSAL_IDS
)
async def test_links_that_cannot_be_made_name_the_field_and_the_fix(
    detection: Detection,
    provider: Provider | None,
    asked: AuthMethod | None,
    has_password: bool,
    code: str,
    field: str,
) -> None:
    with pytest.raises(CannotLink) as refused:
        await plan_link("x@smallisp.net", provider, asked, has_password, FixedDetector(detection))
    assert (refused.value.code, refused.value.field) == (code, field)
    assert refused.value.message
    assert refused.value.fix


async def test_oauth_at_a_password_provider_says_which_methods_it_has() -> None:
    with pytest.raises(CannotLink) as refused:
        await plan_link("x@icloud.com", Provider.ICLOUD, OAUTH, False, FixedDetector(UNKNOWN))
    assert "iCloud Mail" in refused.value.message
    assert "links with password only" in refused.value.message
    app_password_url = PROVIDERS[Provider.ICLOUD].app_password_url
    assert app_password_url is not None
    assert app_password_url in refused.value.fix


async def test_microsoft_with_a_password_says_to_sign_in_instead() -> None:
    with pytest.raises(CannotLink) as refused:
        await settings_for("x@outlook.com", None, FixedDetector(_detected_as(Provider.MICROSOFT)))
    assert refused.value.code == "oauth_required"
    assert "omit the password" in refused.value.fix
