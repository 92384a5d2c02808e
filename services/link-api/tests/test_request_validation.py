"""The HTTP schema refuses every class of bad input with the field named and a fix."""

from typing import Any

import pytest
from pydantic import ValidationError

from link_api.domain.link_request import LinkRequest
from link_api.entrypoints.schemas import LinkRequestIn
from mailbox_link_contract.events import AuthMethod, MailboxOwner, ProviderType, ServerSettings
from mailbox_link_shared.credentials import MailboxCredentials


def _body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "email": "alice@example.org",
        "terms_accepted": True,
        "imap": {"host": "imap.example.org", "port": 993, "security": "ssl", "password": "pw-123"},
        "smtp": {"host": "smtp.example.org", "port": 587, "security": "starttls"},
    }
    body.update(changes)
    return body


def test_defaults_usernames_to_the_email_and_smtp_password_to_imap() -> None:
    request = LinkRequestIn.model_validate(_body(email=" Alice@Example.org ")).to_domain(
        MailboxOwner(account_id="acme", user_id="u1")
    )
    assert request.address == "alice@example.org"
    assert request.imap.username == request.smtp.username == "alice@example.org"
    assert request.credentials is not None
    assert request.credentials.smtp_password == "pw-123"
    assert "pw-123" not in repr(request)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"email": "alice@@example.org"}, "email"),
        ({"terms_accepted": False}, "terms_accepted"),
        ({"terms_accepted": "yes"}, "terms_accepted"),
        (
            {"imap": {"host": "imap.example.org", "port": 0, "security": "ssl", "password": "x"}},
            "port",
        ),
        (
            {"imap": {"host": "imap.example.org", "port": 993, "security": "tls", "password": "x"}},
            "security",
        ),
        (
            {
                "imap": {
                    "host": "imap .example.org",
                    "port": 993,
                    "security": "ssl",
                    "password": "x",
                }
            },
            "host",
        ),
        (
            {"imap": {"host": "imap.example.org", "port": 993, "security": "ssl", "password": ""}},
            "password",
        ),
        ({"surprise": 1}, "surprise"),
        ({"auth": "sso"}, "auth"),
        ({"auth": "OAuth"}, "auth"),
    ],
)
def test_bad_input_names_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as refused:
        LinkRequestIn.model_validate(_body(**changes))
    locations = [".".join(str(p) for p in error["loc"]) for error in refused.value.errors()]
    assert any(field in loc for loc in locations), locations


def test_auth_is_optional_and_takes_password_or_oauth() -> None:
    assert LinkRequestIn.model_validate(_body()).auth is None
    assert LinkRequestIn.model_validate(_body(auth="oauth")).auth is AuthMethod.OAUTH
    assert LinkRequestIn.model_validate(_body(auth="password")).auth is AuthMethod.PASSWORD


@pytest.mark.parametrize(
    ("auth", "credentials"),
    [
        (AuthMethod.PASSWORD, None),
        (AuthMethod.OAUTH, MailboxCredentials("pw", "pw")),
    ],
    ids=["password-link-without-passwords", "oauth-link-with-passwords"],
)
def test_a_link_request_carries_passwords_exactly_when_it_links_with_them(
    auth: AuthMethod, credentials: MailboxCredentials | None
) -> None:
    server = ServerSettings(host="imap.gmail.com", port=993, security="ssl", username="a@gmail.com")
    owner = MailboxOwner(account_id="acme", user_id="u1")
    with pytest.raises(ValueError, match="credentials"):
        LinkRequest(owner, "a@gmail.com", ProviderType.GOOGLE, server, server, credentials, auth)
