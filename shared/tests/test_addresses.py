import pytest

from mailbox_link_shared.addresses import (
    InvalidAddress,
    InvalidHost,
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
