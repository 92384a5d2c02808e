import pytest

from mailbox_link_shared.addresses import (
    InvalidAddress,
    InvalidHost,
    mailbox_key,
    normalize_address,
    normalize_host,
)


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("alice@example.org", "alice@example.org"),
        ("  Alice.Smith@Example.ORG ", "alice.smith@example.org"),
        ("o'brien+sales@example.co.uk", "o'brien+sales@example.co.uk"),
        ("user@bücher.example", "user@xn--bcher-kva.example"),
        ("user@example.org.", "user@example.org"),
    ],
)
def test_valid_addresses_are_normalized(raw: str, normalized: str) -> None:
    assert normalize_address(raw) == normalized


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "alice",
        "alice@@example.org",
        "al ice@example.org",
        '"alice"@example.org',
        "alice,bob@example.org",
        "alice;x@example.org",
        "alice:x@example.org",
        "<alice>@example.org",
        "alice(x)@example.org",
        "alice[x]@example.org",
        "alice\\x@example.org",
        "alice\x00@example.org",
        "alice\t@example.org",
        ".alice@example.org",
        "alice.@example.org",
        "al..ice@example.org",
        "alice@localhost",
        "alice@[127.0.0.1]",
        "alice@example.123",
        "alice@-example.org",
        "alice@exa_mple.org",
        "x" * 65 + "@example.org",
        "alice@" + "a" * 64 + ".org",
        "alice@" + ".".join(["abcdefghij"] * 24) + ".org",
        "ålice@example.org",
    ],
)
def test_invalid_addresses_are_refused_with_a_reason(raw: str) -> None:
    with pytest.raises(InvalidAddress) as refused:
        normalize_address(raw)
    assert str(refused.value)


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("IMAP.Example.org", "imap.example.org"),
        ("127.0.0.1", "127.0.0.1"),
        ("::1", "::1"),
        ("localhost", "localhost"),
        ("mail.bücher.example", "mail.xn--bcher-kva.example"),
    ],
)
def test_hosts_are_names_or_ips(raw: str, normalized: str) -> None:
    assert normalize_host(raw) == normalized


@pytest.mark.parametrize(
    "raw",
    ["", "imap example.org", "http://imap.example.org", "imap.example.org:993", "[::1]", "a_b.org"],
)
def test_invalid_hosts_are_refused(raw: str) -> None:
    with pytest.raises(InvalidHost):
        normalize_host(raw)


@pytest.mark.parametrize(
    ("address", "canonical"),
    [
        ("alice@gmail.com", "alice@gmail.com"),
        ("  Alice.Smith@GMAIL.com ", "alicesmith@gmail.com"),
        ("a.l.i.c.e+newsletters@gmail.com", "alice@gmail.com"),
        ("alice+a+b@gmail.com", "alice@gmail.com"),
        ("alice@googlemail.com", "alice@gmail.com"),
        ("Al.ice+x@GoogleMail.com", "alice@gmail.com"),
        ("bob+shop@outlook.com", "bob@outlook.com"),
        ("Bob.Jones+x@Hotmail.com", "bob.jones@hotmail.com"),  # Outlook.com keeps dots
        ("bob+x@live.com", "bob@live.com"),
        ("bob+x@msn.com", "bob@msn.com"),
        ("Carol.Lee@Acme.example", "carol.lee@acme.example"),
        ("carol+x@acme.example", "carol+x@acme.example"),  # Workspace / Microsoft 365: as is
        ("dave+x@yahoo.com", "dave+x@yahoo.com"),
        ("d.ave@aol.com", "d.ave@aol.com"),
    ],
)
def test_mailbox_key_is_the_one_spelling_a_mailbox_delivers_to(
    address: str, canonical: str
) -> None:
    assert mailbox_key(address) == canonical
