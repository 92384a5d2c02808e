"""Where a password link's servers come from: typed, the provider's, or detected."""

import pytest

from link_api.domain.providers import (
    PROVIDERS,
    Detection,
    Evidence,
    MailSettings,
    Provider,
    Server,
)
from link_api.entrypoints.schemas import app_password
from link_api.handlers import CannotLink, settings_for
from mailbox_link_shared.mail_settings import ConnectionSecurity

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
    ("detection", "provider", "code"),
    [
        (_detected(Provider.MICROSOFT, None), None, "oauth_required"),
        (_detected(Provider.UNKNOWN, None, "no_mail_server"), None, "no_mail_server"),
        (_detected(Provider.UNKNOWN, None), None, "settings_required"),
        (_detected(Provider.UNKNOWN, None), Provider.IMAP, "settings_required"),
    ],
)
async def test_links_that_cannot_be_made_say_why(
    detection: Detection, provider: Provider | None, code: str
) -> None:
    with pytest.raises(CannotLink) as refused:
        await settings_for("x@smallisp.net", provider, FixedDetector(detection))
    assert refused.value.code == code
