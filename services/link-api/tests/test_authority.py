"""Which servers speak for an address: each rule of domain/authority.py, on plain facts."""

import pytest

from link_api.domain.authority import (
    DomainFacts,
    authority_for,
    facts_from,
    facts_from_tables,
    registrable_domain,
    same_host,
)
from link_api.domain.link_request import CannotLink
from link_api.domain.providers import (
    CONSUMER_DOMAINS,
    PROVIDER_HOSTS,
    PROVIDERS,
    AuthMethod,
    Detection,
    Provider,
    Server,
)
from mailbox_link_contract.events import Authority, ServerSettings
from mailbox_link_contract.values import ConnectionSecurity
from mailbox_link_shared.api_errors import ApiErrorCode

PASSWORD, OAUTH = AuthMethod.PASSWORD, AuthMethod.OAUTH
ADDRESS = "alice@example.co.uk"
PUBLISHED = Server("mail.example.co.uk", 993, ConnectionSecurity.SSL)


def _server(host: str, port: int = 993, username: str = ADDRESS) -> ServerSettings:
    return ServerSettings(host=host, port=port, security="ssl", username=username)


def _facts(
    published: tuple[Server, ...] = (PUBLISHED,), mx: tuple[str, ...] = ("mx1.mailhost.net",)
) -> DomainFacts:
    return DomainFacts("example.co.uk", None, published, mx)


def _authority(imap: ServerSettings, facts: DomainFacts, address: str = ADDRESS) -> Authority:
    return authority_for(address, imap, _server("smtp.anywhere.net", 465), PASSWORD, facts)


# Known providers: their own hosts, case and the root's dot ignored.
OWN_SERVERS = [
    (Provider.GOOGLE, "imap.gmail.com", "smtp.gmail.com"),
    (Provider.MICROSOFT, "outlook.office365.com", "smtp.office365.com"),
    (Provider.MICROSOFT, "Outlook.Office365.com.", "SMTP-MAIL.OUTLOOK.COM"),
    (Provider.YAHOO, "imap.mail.yahoo.com", "smtp.mail.yahoo.com"),
    (Provider.AOL, "IMAP.AOL.COM", "smtp.aol.com."),
    (Provider.ICLOUD, "imap.mail.me.com", "smtp.mail.me.com"),
]


@pytest.mark.parametrize(("provider", "imap", "smtp"), OWN_SERVERS)
def test_a_known_providers_own_servers_speak_for_its_addresses(
    provider: Provider, imap: str, smtp: str
) -> None:
    facts = DomainFacts("hosted.example", provider)
    address = "bob@hosted.example"
    for login in (address, "someone-else"):  # the provider decides whose mailbox it is
        authority = authority_for(
            address, _server(imap, username=login), _server(smtp, 465), PASSWORD, facts
        )
        assert authority is Authority.PROVIDER


@pytest.mark.parametrize(
    ("imap", "smtp", "field"),
    [
        ("localhost", "localhost", "imap.host"),
        ("imap.evil.example", "smtp.gmail.com", "imap.host"),
        ("imap.gmail.com", "smtp.evil.example", "smtp.host"),
        ("imap.gmail.com.evil.example", "smtp.gmail.com", "imap.host"),
        ("outlook.office365.com", "smtp.gmail.com", "imap.host"),  # another provider's
        ("127.0.0.1", "smtp.gmail.com", "imap.host"),
    ],
)
def test_other_servers_for_a_known_provider_are_refused_naming_the_field(
    imap: str, smtp: str, field: str
) -> None:
    facts = facts_from_tables("gmail.com")
    with pytest.raises(CannotLink) as refused:
        authority_for("dana@gmail.com", _server(imap), _server(smtp, 465), PASSWORD, facts)
    error = refused.value
    assert error.code is ApiErrorCode.PROVIDER_SERVERS_REQUIRED
    assert error.field == field
    assert error.message.startswith("gmail.com is hosted by Google:")
    assert "sign in with Google" in error.fix
    assert "imap.gmail.com" in error.fix


def test_a_provider_without_sign_in_or_without_passwords_is_named_in_the_fix() -> None:
    with pytest.raises(CannotLink) as icloud:
        authority_for(
            "x@icloud.com",
            _server("localhost"),
            _server("localhost"),
            PASSWORD,
            facts_from_tables("icloud.com"),
        )
    assert "imap.mail.me.com" in icloud.value.fix
    assert "sign in" not in icloud.value.fix
    with pytest.raises(CannotLink) as microsoft:
        authority_for(
            "x@outlook.com",
            _server("localhost"),
            _server("localhost"),
            PASSWORD,
            facts_from_tables("outlook.com"),
        )
    assert microsoft.value.fix.startswith("sign in with Microsoft")
    assert "app password" not in microsoft.value.fix


def test_every_provider_with_own_hosts_includes_its_table_settings() -> None:
    for provider, hosts in PROVIDER_HOSTS.items():
        settings = PROVIDERS[provider].settings
        assert settings is not None
        assert {settings.imap.host, settings.smtp.host} <= hosts
    # The consumer-domain table names only providers with own hosts: each one is known.
    assert set(CONSUMER_DOMAINS.values()) <= set(PROVIDER_HOSTS)


def test_the_table_alone_knows_consumer_domains_and_nothing_else() -> None:
    assert facts_from_tables("googlemail.com").provider is Provider.GOOGLE
    assert facts_from_tables("hotmail.co.uk").provider is Provider.MICROSOFT
    assert facts_from_tables("example.org") == DomainFacts("example.org")


def test_detection_facts_keep_only_providers_with_own_hosts() -> None:
    imap = Detection("acme.example", Provider.IMAP, "high", (), mx_hosts=("mx.acme.example",))
    assert facts_from(imap) == DomainFacts("acme.example", None, (), ("mx.acme.example",))
    workspace = Detection("acme.example", Provider.GOOGLE, "high", ())
    assert facts_from(workspace).provider is Provider.GOOGLE
    unknown = Detection("acme.example", Provider.UNKNOWN, "none", ())
    assert facts_from(unknown).provider is None


def test_an_oauth_link_is_the_providers_sign_in() -> None:
    imap, smtp = _server("imap.gmail.com"), _server("smtp.gmail.com", 465)
    assert authority_for(ADDRESS, imap, smtp, OAUTH, _facts()) is Authority.PROVIDER


def test_the_published_host_and_port_with_the_address_as_login_are_published_settings() -> None:
    assert _authority(_server("mail.example.co.uk"), _facts()) is Authority.PUBLISHED_SETTINGS
    assert _authority(_server("MAIL.Example.co.uk."), _facts()) is Authority.PUBLISHED_SETTINGS
    assert (
        _authority(_server("mail.example.co.uk", username="Alice@Example.co.uk"), _facts())
        is Authority.PUBLISHED_SETTINGS
    )
    # A published server may be anywhere the domain says, even a name of no public suffix.
    local = DomainFacts("example.org", None, (Server("localhost", 40123, ConnectionSecurity.SSL),))
    address = "carol@example.org"
    imap = _server("localhost", 40123, address)
    assert _authority(imap, local, address) is Authority.PUBLISHED_SETTINGS
    # Another port of the published host is not what the domain published.
    assert _authority(_server("localhost", 40124, address), local, address) is (
        Authority.OWNERSHIP_PROOF
    )


def test_a_host_of_the_addresss_registrable_domain_is_same_domain() -> None:
    # example.co.uk is registrable under the multi-label suffix co.uk.
    assert _authority(_server("imap.example.co.uk"), _facts(())) is Authority.SAME_DOMAIN
    assert _authority(_server("example.co.uk", 143), _facts()) is Authority.SAME_DOMAIN
    # A different port of the published host still shares the domain.
    assert _authority(_server("mail.example.co.uk", 143), _facts()) is Authority.SAME_DOMAIN


def test_a_host_of_an_mx_hosts_registrable_domain_is_same_domain() -> None:
    assert _authority(_server("imap.mailhost.net"), _facts()) is Authority.SAME_DOMAIN
    assert _authority(_server("imap.otherhost.net"), _facts()) is Authority.OWNERSHIP_PROOF


@pytest.mark.parametrize(
    "host",
    [
        "localhost",
        "127.0.0.1",
        "::1",
        "203.0.113.7",
        "mail",
        "co.uk",  # a public suffix is nobody's domain
        "example.uk.com",  # uk.com is a (private) suffix: not example.co.uk
        "imap.example.com",
        "mx.hosted.test",  # .test is under no public suffix
    ],
)
def test_other_hosts_need_an_ownership_proof(host: str) -> None:
    assert _authority(_server(host), _facts(())) is Authority.OWNERSHIP_PROOF


def test_a_login_other_than_the_address_needs_an_ownership_proof() -> None:
    for login in ("alice", "alice@example.co.uk.evil.example", "bob@example.co.uk"):
        imap = _server("mail.example.co.uk", username=login)
        assert _authority(imap, _facts()) is Authority.OWNERSHIP_PROOF
        imap = _server("imap.example.co.uk", username=login)
        assert _authority(imap, _facts()) is Authority.OWNERSHIP_PROOF


def test_mx_hosts_under_no_public_suffix_share_no_domain() -> None:
    facts = DomainFacts("hosted.test", None, (), ("mx.hosted.test",))
    address = "bob@hosted.test"
    for host in ("mx.hosted.test", "imap.hosted.test", "localhost"):
        assert _authority(_server(host, username=address), facts, address) is (
            Authority.OWNERSHIP_PROOF
        )


@pytest.mark.parametrize(
    ("host", "registrable"),
    [
        ("imap.example.co.uk", "example.co.uk"),
        ("IMAP.Example.ORG.", "example.org"),
        ("a.b.c.example.com", "example.com"),
        ("alice.github.io", "alice.github.io"),  # a private suffix: each user is a domain
        ("co.uk", None),
        ("localhost", None),
        ("mail.internal", None),
        ("10.0.0.1", None),
        ("2001:db8::1", None),
    ],
)
def test_registrable_domains_follow_the_bundled_public_suffix_list(
    host: str, registrable: str | None
) -> None:
    assert registrable_domain(host) == registrable


def test_host_names_compare_without_case_or_the_roots_dot() -> None:
    assert same_host("IMAP.Gmail.com.", "imap.gmail.com")
    assert not same_host("imap.gmail.com.evil", "imap.gmail.com")
