"""The HTTP schema refuses every class of bad input with the field named and a fix."""

from typing import Any

import pytest
from pydantic import ValidationError

from link_api.entrypoints.schemas import LinkRequestIn
from mailbox_link_shared.events import MailboxOwner


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
    ],
)
def test_bad_input_names_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as refused:
        LinkRequestIn.model_validate(_body(**changes))
    locations = [".".join(str(p) for p in error["loc"]) for error in refused.value.errors()]
    assert any(field in loc for loc in locations), locations
