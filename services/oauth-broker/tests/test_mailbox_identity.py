"""Whether the mailbox a user signed in to is the one they asked to link."""

import pytest

from oauth_broker.domain.mailbox_identity import is_same_mailbox, matches_any


@pytest.mark.parametrize(
    ("requested", "signed_in"),
    [
        ("alice@gmail.com", "alice@gmail.com"),
        ("alice.smith@gmail.com", "alicesmith@gmail.com"),
        ("AliceSmith@gmail.com", "alice.smith@gmail.com"),
        ("alice+work@gmail.com", "alice@gmail.com"),
        ("alice@googlemail.com", "alice@gmail.com"),
        ("a.lice+x@googlemail.com", "alice@gmail.com"),
        ("bob+shop@outlook.com", "bob@outlook.com"),
        ("BOB@Outlook.com", "bob+other@outlook.com"),
        ("bob+x@hotmail.com", "Bob@hotmail.com"),
        ("Carol@Acme.example", "carol@acme.example"),
        ("carol@contoso.onmicrosoft.com", "CAROL@CONTOSO.ONMICROSOFT.COM"),
        ("Dave@Yahoo.com", "dave@yahoo.com"),
    ],
)
def test_same_mailbox(requested: str, signed_in: str) -> None:
    assert is_same_mailbox(requested, signed_in)
    assert is_same_mailbox(signed_in, requested)


@pytest.mark.parametrize(
    ("requested", "signed_in"),
    [
        ("alice@gmail.com", "bob@gmail.com"),
        ("alice@gmail.com", "alice@outlook.com"),
        ("alice@gmail.com", "alice@acme.example"),  # a Workspace domain is not gmail.com
        # Outlook.com ignores +tags but not dots.
        ("bob.jones@outlook.com", "bobjones@outlook.com"),
        ("bob@outlook.com", "bob@hotmail.com"),
        # Workspace and Microsoft 365: an alias or a group is another address than the
        # mailbox that signs in, even where Gmail's or Outlook.com's rules would match it.
        ("carol.lee@acme.example", "carollee@acme.example"),
        ("carol+x@acme.example", "carol@acme.example"),
        ("sales@acme.example", "carol@acme.example"),
        ("c.lee@acme.example", "carol.lee@acme.example"),
        ("carol+x@contoso.onmicrosoft.com", "carol@contoso.onmicrosoft.com"),
        ("dave+x@yahoo.com", "dave@yahoo.com"),
        ("d.ave@aol.com", "dave@aol.com"),
    ],
)
def test_different_mailbox(requested: str, signed_in: str) -> None:
    assert not is_same_mailbox(requested, signed_in)
    assert not is_same_mailbox(signed_in, requested)


@pytest.mark.parametrize("signed_in", [None, ""])
def test_no_signed_in_address_matches_nothing(signed_in: str | None) -> None:
    assert not is_same_mailbox("alice@gmail.com", signed_in)


def test_matches_any_of_the_account_addresses() -> None:
    # Graph's /me: the primary SMTP address and the UPN; either may be the requested one.
    assert matches_any("carol@acme.example", ("carol.lee@acme.example", "carol@acme.example"))
    assert matches_any("alice+x@gmail.com", (None, "", "A.lice@googlemail.com"))
    assert not matches_any("sales@acme.example", ("carol@acme.example", None))
    assert not matches_any("alice@gmail.com", ())
    assert not matches_any("alice@gmail.com", (None, ""))
