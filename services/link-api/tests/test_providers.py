"""The provider tables and the pure rules detection reads: consumer domains, MX, SPF."""

import pytest

from link_api.domain.providers import (
    CONSUMER_DOMAINS,
    OAUTH_PROVIDER_TYPES,
    PROVIDERS,
    AuthMethod,
    MailSettings,
    Provider,
    Server,
    match_mx,
    spf_hints,
)
from mailbox_link_contract.values import ConnectionSecurity


@pytest.mark.parametrize(
    ("domain", "provider"),
    [
        ("gmail.com", Provider.GOOGLE),
        ("googlemail.com", Provider.GOOGLE),
        ("outlook.com", Provider.MICROSOFT),
        ("hotmail.co.uk", Provider.MICROSOFT),
        ("live.fr", Provider.MICROSOFT),
        ("msn.com", Provider.MICROSOFT),
        ("yahoo.com", Provider.YAHOO),
        ("yahoo.co.uk", Provider.YAHOO),
        ("ymail.com", Provider.YAHOO),
        ("aol.com", Provider.AOL),
        ("icloud.com", Provider.ICLOUD),
        ("me.com", Provider.ICLOUD),
        ("mac.com", Provider.ICLOUD),
    ],
)
def test_consumer_domain_maps_to_its_provider(domain: str, provider: Provider) -> None:
    assert CONSUMER_DOMAINS[domain] is provider


def test_yahoo_japan_is_another_company() -> None:
    assert "yahoo.co.jp" not in CONSUMER_DOMAINS


def test_consumer_domains_name_only_real_providers() -> None:
    assert set(CONSUMER_DOMAINS.values()) <= set(PROVIDERS) - {Provider.IMAP}


@pytest.mark.parametrize(
    ("host", "provider"),
    [
        ("aspmx.l.google.com", Provider.GOOGLE),
        ("alt1.aspmx.l.google.com", Provider.GOOGLE),
        ("ASPMX.L.GOOGLE.COM.", Provider.GOOGLE),
        ("contoso-com.mail.protection.outlook.com", Provider.MICROSOFT),
        ("contoso-com.l-v1.mx.microsoft", Provider.MICROSOFT),
        ("mx-aol.mail.gm0.yahoodns.net", Provider.AOL),
        ("mta5.am0.yahoodns.net", Provider.YAHOO),
        ("mx01.mail.icloud.com", Provider.ICLOUD),
    ],
)
def test_mx_host_names_its_provider(host: str, provider: Provider) -> None:
    pattern = match_mx([host])
    assert pattern is not None
    assert pattern.provider is provider
    assert pattern.settings is None  # the big providers' settings live in PROVIDERS


def test_aol_mx_in_yahoos_zone_is_aol_not_yahoo() -> None:
    pattern = match_mx(["mx-aol.mail.gm0.yahoodns.net"])
    assert pattern is not None
    assert pattern.provider is Provider.AOL
    assert pattern.name == "AOL"


def test_hosting_mx_is_imap_with_its_settings() -> None:
    pattern = match_mx(["smtp.secureserver.net"])
    assert pattern is not None
    assert pattern.provider is Provider.IMAP
    assert pattern.name == "GoDaddy Workspace Email"
    assert pattern.settings == MailSettings(
        Server("imap.secureserver.net", 993, ConnectionSecurity.SSL),
        Server("smtpout.secureserver.net", 465, ConnectionSecurity.SSL),
    )


@pytest.mark.parametrize(
    "hosts",
    [
        ["mx.smallisp.net"],
        ["evilgoogle.com"],
        ["mx.evilgoogle.com"],
        ["google.com.evil.net"],
        ["aspmx.l.google.com.evil.net"],
        ["notaspmx.l.google.com"],
        ["mail.protection.outlook.com.evil.net"],
        [],
    ],
)
def test_unknown_or_look_alike_mx_matches_nothing(hosts: list[str]) -> None:
    assert match_mx(hosts) is None


def test_match_mx_takes_the_most_preferred_matching_host() -> None:
    google_first = match_mx(["aspmx.l.google.com", "contoso-com.mail.protection.outlook.com"])
    microsoft_first = match_mx(["contoso-com.mail.protection.outlook.com", "aspmx.l.google.com"])
    assert google_first is not None
    assert google_first.provider is Provider.GOOGLE
    assert microsoft_first is not None
    assert microsoft_first.provider is Provider.MICROSOFT


def test_match_mx_skips_unknown_hosts_to_a_known_one() -> None:
    pattern = match_mx(["mx.smallisp.net", "alt1.aspmx.l.google.com"])
    assert pattern is not None
    assert pattern.provider is Provider.GOOGLE


@pytest.mark.parametrize(
    ("records", "hints"),
    [
        (["v=spf1 a mx -all"], []),
        (["v=spf1 include:_spf.google.com ~all"], [Provider.GOOGLE]),
        (["v=spf1 +include:_spf.google.com ~all"], [Provider.GOOGLE]),
        (["V=SPF1 Include:_SPF.Google.com ~all"], [Provider.GOOGLE]),
        (
            ["v=spf1 include:spf.protection.outlook.com include:_spf.google.com -all"],
            [Provider.MICROSOFT, Provider.GOOGLE],
        ),
        (["v=spf1 include:spf.example.net -all"], []),
        (["google-site-verification=abc", "include:_spf.google.com"], []),
        (["v=spf10 include:_spf.google.com"], []),
        (["", "v=spf1 include:_spf.mail.yahoo.com ~all"], [Provider.YAHOO]),
        ([], []),
    ],
    ids=[
        "a-mx-only",
        "google-include",
        "plus-qualifier",
        "case-insensitive",
        "in-order",
        "unknown-include",
        "non-spf-ignored",
        "not-spf1",
        "empty-txt-skipped",
        "no-txt",
    ],
)
def test_spf_hints(records: list[str], hints: list[Provider]) -> None:
    assert spf_hints(records) == hints


def test_spf_redirect_or_a_mechanism_is_not_an_include() -> None:
    assert spf_hints(["v=spf1 redirect=_spf.google.com"]) == []
    assert spf_hints(["v=spf1 a:_spf.google.com -all"]) == []


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("%EMAILADDRESS%", "alice@example.org"),
        ("%EMAILLOCALPART%", "alice"),
        ("%EMAILDOMAIN%", "example.org"),
        ("%EMAILLOCALPART%+mail@%EMAILDOMAIN%", "alice+mail@example.org"),
        ("fixed-login", "fixed-login"),
    ],
)
def test_username_template(template: str, expected: str) -> None:
    server = Server("imap.example.org", 993, ConnectionSecurity.SSL, template)
    assert server.username_for("alice@example.org") == expected


def test_username_defaults_to_the_address() -> None:
    server = Server("imap.example.org", 993, ConnectionSecurity.SSL)
    assert server.username_for("alice@example.org") == "alice@example.org"


@pytest.mark.parametrize(
    "provider",
    [p for p, info in PROVIDERS.items() if AuthMethod.PASSWORD in info.auth_methods],
)
def test_password_providers_have_settings_except_imap(provider: Provider) -> None:
    info = PROVIDERS[provider]
    assert info.provider is provider
    if provider is Provider.IMAP:
        assert info.settings is None  # the user enters (or detection finds) the servers
    else:
        assert info.settings is not None


def test_every_provider_but_unknown_and_oidc_is_in_the_catalogue() -> None:
    # OIDC providers are the deployment's (MBL_OIDC_PROVIDERS, domain/oidc.py), not a table's.
    assert set(PROVIDERS) == set(Provider) - {Provider.UNKNOWN, Provider.OIDC}


def test_every_provider_with_sign_in_has_its_servers_and_a_verifier_type() -> None:
    with_sign_in = {p for p, info in PROVIDERS.items() if AuthMethod.OAUTH in info.auth_methods}
    assert with_sign_in == set(OAUTH_PROVIDER_TYPES)
    for provider, provider_type in OAUTH_PROVIDER_TYPES.items():
        assert provider_type.value == provider.value
        assert PROVIDERS[provider].settings is not None  # the servers the broker logs in to
