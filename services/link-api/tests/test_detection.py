"""The Detector's rules, in order, with hand-written DNS and autoconfig fakes and a fake clock."""

from dataclasses import dataclass

import pytest

from link_api.adapters.detector import FAILURE_TTL, MAX_TTL, MIN_TTL, Detector
from link_api.adapters.dns_lookup import LookupFailed, NoSuchDomain, SrvTarget
from link_api.domain.providers import (
    PROVIDERS,
    Discovered,
    Evidence,
    MailSettings,
    Provider,
    Server,
)
from link_api_fakes import DNS_TTL as TTL
from link_api_fakes import FakeAutoconfig, FakeDns
from mailbox_link_contract.values import ConnectionSecurity

SSL, STARTTLS = ConnectionSecurity.SSL, ConnectionSecurity.STARTTLS


def _srv(host: str, port: int) -> list[SrvTarget]:
    return [SrvTarget(host, port, priority=0, weight=0)]


@dataclass
class FakeClock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class World:
    dns: FakeDns
    autoconfig: FakeAutoconfig
    clock: FakeClock
    detector: Detector


@pytest.fixture
def world() -> World:
    dns, autoconfig, clock = FakeDns(), FakeAutoconfig(), FakeClock()
    return World(dns, autoconfig, clock, Detector(dns, autoconfig, clock))


def _rules(evidence: tuple[Evidence, ...]) -> list[str]:
    return [e.rule for e in evidence]


AUTOCONFIG_SETTINGS = MailSettings(
    Server("mail.example.org", 993, SSL), Server("mail.example.org", 465, SSL)
)


# 1. Tables: the address alone decides.


async def test_consumer_domain_is_decided_without_any_dns_call(world: World) -> None:
    detection = await world.detector.detect("alice@gmail.com")
    assert detection.provider is Provider.GOOGLE
    assert detection.confidence == "high"
    assert _rules(detection.evidence) == ["consumer_domain"]
    assert detection.settings == PROVIDERS[Provider.GOOGLE].settings
    assert Provider.GOOGLE not in detection.alternatives
    assert world.dns.calls == []
    assert world.autoconfig.calls == []


async def test_imap_providers_own_domain_uses_built_in_settings(world: World) -> None:
    detection = await world.detector.detect("alice@gmx.de")
    assert detection.provider is Provider.IMAP
    assert _rules(detection.evidence) == ["ispdb"]
    assert detection.settings is not None
    assert detection.settings.imap.host == "imap.gmx.net"
    assert world.dns.calls == []


# 2. MX names the big providers.


async def test_google_workspace_custom_domain_by_mx(world: World) -> None:
    world.dns.mx_records["example.com"] = ["aspmx.l.google.com", "alt1.aspmx.l.google.com"]
    detection = await world.detector.detect("alice@example.com")
    assert detection.provider is Provider.GOOGLE
    assert detection.confidence == "high"
    assert detection.evidence[0].rule == "mx"
    assert "aspmx.l.google.com" in detection.evidence[0].detail
    assert detection.settings == PROVIDERS[Provider.GOOGLE].settings
    assert detection.provider_name == "Google Workspace"
    assert detection.reason is None
    assert Provider.GOOGLE not in detection.alternatives
    assert world.dns.asked("srv") == []


async def test_microsoft_365_by_mx(world: World) -> None:
    world.dns.mx_records["contoso.com"] = ["contoso-com.mail.protection.outlook.com"]
    detection = await world.detector.detect("alice@contoso.com")
    assert detection.provider is Provider.MICROSOFT
    assert detection.confidence == "high"
    assert detection.evidence[0].rule == "mx"
    assert detection.settings == PROVIDERS[Provider.MICROSOFT].settings


@pytest.mark.parametrize(
    "spf",
    ["v=spf1 a mx -all", "v=spf1 include:_spf.google.com ~all"],
    ids=["a-mx", "google-include"],
)
async def test_microsoft_mx_decides_whatever_spf_says(world: World, spf: str) -> None:
    world.dns.mx_records["contoso.com"] = ["contoso-com.mail.protection.outlook.com"]
    world.dns.txt_records["contoso.com"] = [spf]
    detection = await world.detector.detect("alice@contoso.com")
    assert detection.provider is Provider.MICROSOFT
    assert detection.settings == PROVIDERS[Provider.MICROSOFT].settings


async def test_autoconfig_is_not_fetched_when_mx_decided_a_big_provider(world: World) -> None:
    world.dns.mx_records["example.com"] = ["aspmx.l.google.com"]
    world.dns.srv_records["_imaps._tcp.example.com"] = _srv("imap.example.com", 993)
    world.dns.srv_records["_submission._tcp.example.com"] = _srv("smtp.example.com", 587)
    world.autoconfig.found = Discovered(AUTOCONFIG_SETTINGS, "https://autoconfig.example.com")
    detection = await world.detector.detect("alice@example.com")
    assert detection.provider is Provider.GOOGLE
    assert world.autoconfig.calls == []
    assert world.dns.asked("srv") == []


# 4. SPF is only a hint.


async def test_spf_google_include_with_own_mx_is_unknown_not_google(world: World) -> None:
    world.dns.mx_records["example.org"] = ["mx.example.org"]
    world.dns.txt_records["example.org"] = ["v=spf1 include:_spf.google.com ~all"]
    detection = await world.detector.detect("alice@example.org")
    assert detection.provider is Provider.UNKNOWN
    assert detection.confidence == "none"
    assert detection.reason is None
    assert detection.settings is None
    assert detection.alternatives[0] is Provider.GOOGLE
    assert set(detection.alternatives) == set(PROVIDERS)
    assert len(detection.alternatives) == len(PROVIDERS)
    assert "spf" in _rules(detection.evidence)
    assert "mx" in _rules(detection.evidence)
    assert world.autoconfig.calls == [("example.org", "alice@example.org")]


# 3. Settings discovery for IMAP: autoconfig, then SRV, then the hosting provider's MX.


async def test_srv_records_give_imap_settings(world: World) -> None:
    world.dns.mx_records["example.org"] = ["mx.example.org"]
    world.dns.srv_records["_imaps._tcp.example.org"] = _srv("imap.example.org", 993)
    world.dns.srv_records["_submission._tcp.example.org"] = _srv("smtp.example.org", 587)
    detection = await world.detector.detect("alice@example.org")
    assert detection.provider is Provider.IMAP
    assert detection.confidence == "high"
    assert detection.settings == MailSettings(
        Server("imap.example.org", 993, SSL), Server("smtp.example.org", 587, STARTTLS)
    )
    assert detection.evidence[0].rule == "srv"
    assert "_imaps._tcp.example.org" in detection.evidence[0].detail
    assert "_submission._tcp.example.org" in detection.evidence[0].detail


async def test_imaps_srv_is_preferred_over_imap(world: World) -> None:
    world.dns.mx_records["example.org"] = ["mx.example.org"]
    world.dns.srv_records["_imap._tcp.example.org"] = _srv("plain.example.org", 143)
    world.dns.srv_records["_imaps._tcp.example.org"] = _srv("tls.example.org", 993)
    world.dns.srv_records["_submissions._tcp.example.org"] = _srv("smtp.example.org", 465)
    world.dns.srv_records["_submission._tcp.example.org"] = _srv("smtp.example.org", 587)
    detection = await world.detector.detect("alice@example.org")
    assert detection.settings == MailSettings(
        Server("tls.example.org", 993, SSL), Server("smtp.example.org", 465, SSL)
    )


async def test_imap_srv_alone_is_used_with_starttls(world: World) -> None:
    world.dns.mx_records["example.org"] = ["mx.example.org"]
    world.dns.srv_records["_imap._tcp.example.org"] = _srv("imap.example.org", 143)
    world.dns.srv_records["_submission._tcp.example.org"] = _srv("smtp.example.org", 587)
    detection = await world.detector.detect("alice@example.org")
    assert detection.settings is not None
    assert detection.settings.imap == Server("imap.example.org", 143, STARTTLS)


async def test_imap_srv_without_submission_does_not_decide(world: World) -> None:
    world.dns.mx_records["example.org"] = ["mx.example.org"]
    world.dns.srv_records["_imaps._tcp.example.org"] = _srv("imap.example.org", 993)
    detection = await world.detector.detect("alice@example.org")
    assert detection.provider is Provider.UNKNOWN
    assert detection.settings is None
    assert "srv" not in _rules(detection.evidence)


async def test_srv_lookup_failure_falls_through_to_the_picker(world: World) -> None:
    world.dns.mx_records["example.org"] = ["mx.example.org"]
    world.dns.srv_records["_imaps._tcp.example.org"] = _srv("imap.example.org", 993)
    world.dns.srv_records["_submission._tcp.example.org"] = _srv("smtp.example.org", 587)
    for service in ("_imaps", "_imap", "_submissions", "_submission"):
        world.dns.errors[f"srv {service}._tcp.example.org"] = LookupFailed("SRV: Timeout")
    detection = await world.detector.detect("alice@example.org")
    assert detection.provider is Provider.UNKNOWN
    assert detection.reason is None


async def test_autoconfig_wins_over_srv(world: World) -> None:
    world.dns.mx_records["example.org"] = ["mx.example.org"]
    world.dns.srv_records["_imaps._tcp.example.org"] = _srv("imap.example.org", 993)
    world.dns.srv_records["_submission._tcp.example.org"] = _srv("smtp.example.org", 587)
    world.autoconfig.found = Discovered(AUTOCONFIG_SETTINGS, "https://autoconfig.example.org")
    detection = await world.detector.detect("alice@example.org")
    assert detection.provider is Provider.IMAP
    assert detection.settings == AUTOCONFIG_SETTINGS
    assert detection.evidence[0].rule == "autoconfig"
    assert detection.evidence[0].detail == "https://autoconfig.example.org"
    assert "srv" not in _rules(detection.evidence)
    assert world.autoconfig.calls == [("example.org", "alice@example.org")]
    assert world.dns.asked("srv") == []


async def test_hosting_mx_pattern_is_used_when_nothing_is_discovered(world: World) -> None:
    world.dns.mx_records["example.org"] = ["smtp.secureserver.net", "mailstore1.secureserver.net"]
    detection = await world.detector.detect("alice@example.org")
    assert detection.provider is Provider.IMAP
    assert detection.provider_name == "GoDaddy Workspace Email"
    assert detection.settings == MailSettings(
        Server("imap.secureserver.net", 993, SSL), Server("smtpout.secureserver.net", 465, SSL)
    )
    assert _rules(detection.evidence) == ["mx"]
    assert world.autoconfig.calls == [("example.org", "alice@example.org")]
    assert len(world.dns.asked("srv")) == 4


async def test_autoconfig_wins_over_the_hosting_mx_pattern(world: World) -> None:
    world.dns.mx_records["example.org"] = ["smtp.secureserver.net"]
    world.autoconfig.found = Discovered(AUTOCONFIG_SETTINGS, "https://autoconfig.example.org")
    detection = await world.detector.detect("alice@example.org")
    assert detection.settings == AUTOCONFIG_SETTINGS


# No mail server, or no answer.


async def test_no_mx_records_is_no_mail_server(world: World) -> None:
    world.dns.txt_records["example.org"] = ["v=spf1 include:_spf.google.com ~all"]
    detection = await world.detector.detect("alice@example.org")
    assert detection.provider is Provider.UNKNOWN
    assert detection.reason == "no_mail_server"
    assert detection.alternatives == ()
    assert _rules(detection.evidence) == ["no_mx"]
    assert world.autoconfig.calls == []


async def test_nxdomain_is_no_mail_server(world: World) -> None:
    world.dns.fail("example.invalid", NoSuchDomain("example.invalid"))
    detection = await world.detector.detect("alice@example.invalid")
    assert detection.provider is Provider.UNKNOWN
    assert detection.reason == "no_mail_server"
    assert detection.alternatives == ()
    assert world.autoconfig.calls == []


async def test_lookup_failure_is_unknown_with_every_provider_offered(world: World) -> None:
    world.dns.fail("example.org", LookupFailed("MX example.org: Timeout"))
    detection = await world.detector.detect("alice@example.org")
    assert detection.provider is Provider.UNKNOWN
    assert detection.confidence == "none"
    assert detection.reason == "lookup_failed"
    assert set(detection.alternatives) == set(PROVIDERS)
    assert len(detection.alternatives) == len(PROVIDERS)
    assert _rules(detection.evidence) == ["lookup_failed"]
    assert world.autoconfig.calls == []


# Caching.


async def test_second_detect_within_the_ttl_asks_no_dns(world: World) -> None:
    world.dns.mx_records["example.com"] = ["aspmx.l.google.com"]
    first = await world.detector.detect("alice@example.com")
    asked = len(world.dns.calls)
    world.clock.now += TTL - 1
    assert await world.detector.detect("alice@example.com") == first
    assert len(world.dns.calls) == asked
    world.clock.now += 2
    await world.detector.detect("alice@example.com")
    assert len(world.dns.calls) == 2 * asked


async def test_cache_time_is_the_shortest_record_ttl(world: World) -> None:
    world.dns.mx_records["example.com"] = ["aspmx.l.google.com"]
    world.dns.ttls["mx example.com"] = 3000
    world.dns.ttls["txt example.com"] = 200
    await world.detector.detect("alice@example.com")
    world.clock.now += 199
    await world.detector.detect("alice@example.com")
    assert len(world.dns.asked("mx")) == 1
    world.clock.now += 2
    await world.detector.detect("alice@example.com")
    assert len(world.dns.asked("mx")) == 2


@pytest.mark.parametrize(
    ("record_ttl", "cached_for"),
    [(5, MIN_TTL), (0, MIN_TTL), (86400, MAX_TTL)],
    ids=["short", "zero", "long"],
)
async def test_cache_time_is_clamped(world: World, record_ttl: int, cached_for: int) -> None:
    world.dns.mx_records["example.com"] = ["aspmx.l.google.com"]
    world.dns.ttls["mx example.com"] = record_ttl
    world.dns.ttls["txt example.com"] = record_ttl
    await world.detector.detect("alice@example.com")
    world.clock.now += cached_for - 1
    await world.detector.detect("alice@example.com")
    assert len(world.dns.asked("mx")) == 1
    world.clock.now += 2
    await world.detector.detect("alice@example.com")
    assert len(world.dns.asked("mx")) == 2


async def test_srv_ttl_shortens_the_cache_time(world: World) -> None:
    world.dns.mx_records["example.org"] = ["mx.example.org"]
    world.dns.srv_records["_imaps._tcp.example.org"] = _srv("imap.example.org", 993)
    world.dns.srv_records["_submission._tcp.example.org"] = _srv("smtp.example.org", 587)
    world.dns.ttls["srv _imaps._tcp.example.org"] = MIN_TTL
    await world.detector.detect("alice@example.org")
    world.clock.now += MIN_TTL + 1
    await world.detector.detect("alice@example.org")
    assert len(world.dns.asked("mx")) == 2


async def test_a_failure_is_cached_only_briefly(world: World) -> None:
    world.dns.mx_records["example.com"] = ["aspmx.l.google.com"]
    world.dns.fail("example.com", LookupFailed("MX example.com: Timeout"))
    failed = await world.detector.detect("alice@example.com")
    assert failed.reason == "lookup_failed"
    world.dns.errors.clear()  # the DNS server recovers
    world.clock.now += FAILURE_TTL - 1
    assert await world.detector.detect("alice@example.com") == failed
    assert len(world.dns.asked("mx")) == 1
    world.clock.now += 2
    detection = await world.detector.detect("alice@example.com")
    assert detection.provider is Provider.GOOGLE
    assert len(world.dns.asked("mx")) == 2
    assert FAILURE_TTL < MIN_TTL


async def test_two_addresses_of_a_domain_share_the_cache(world: World) -> None:
    world.dns.mx_records["example.com"] = ["aspmx.l.google.com"]
    alice = await world.detector.detect("alice@example.com")
    bob = await world.detector.detect("bob@example.com")
    assert bob == alice
    assert world.dns.asked("mx") == ["mx example.com"]
    assert world.dns.asked("txt") == ["txt example.com"]


async def test_other_domains_are_cached_apart(world: World) -> None:
    world.dns.mx_records["example.com"] = ["aspmx.l.google.com"]
    world.dns.mx_records["contoso.com"] = ["contoso-com.mail.protection.outlook.com"]
    google = await world.detector.detect("alice@example.com")
    microsoft = await world.detector.detect("alice@contoso.com")
    assert (google.provider, microsoft.provider) == (Provider.GOOGLE, Provider.MICROSOFT)


# Facts kept for a link's authority: the MX hosts and the IMAP servers the domain publishes.


async def test_srv_detection_keeps_every_published_imap_server_and_the_mx_hosts(
    world: World,
) -> None:
    world.dns.mx_records["example.org"] = ["mx1.example.org", "mx2.mailhost.net"]
    world.dns.srv_records["_imaps._tcp.example.org"] = _srv("tls.example.org", 993)
    world.dns.srv_records["_imap._tcp.example.org"] = _srv("plain.example.org", 143)
    world.dns.srv_records["_submission._tcp.example.org"] = _srv("smtp.example.org", 587)
    detection = await world.detector.detect("alice@example.org")
    assert detection.mx_hosts == ("mx1.example.org", "mx2.mailhost.net")
    assert detection.published_imap == (
        Server("tls.example.org", 993, SSL),
        Server("plain.example.org", 143, STARTTLS),
    )


async def test_autoconfig_detection_publishes_its_imap_server(world: World) -> None:
    world.dns.mx_records["example.org"] = ["mx.example.org"]
    world.autoconfig.found = Discovered(AUTOCONFIG_SETTINGS, "https://autoconfig.example.org")
    detection = await world.detector.detect("alice@example.org")
    assert detection.published_imap == (AUTOCONFIG_SETTINGS.imap,)
    assert detection.mx_hosts == ("mx.example.org",)


async def test_built_in_settings_are_not_published_by_the_domain(world: World) -> None:
    # A hosting provider's MX pattern and the ISPDB table tell settings; the domain did not.
    world.dns.mx_records["smallbiz.example"] = ["mx1.emailsrvr.com"]
    hosted = await world.detector.detect("bob@smallbiz.example")
    assert hosted.settings is not None
    assert hosted.published_imap == ()
    assert hosted.mx_hosts == ("mx1.emailsrvr.com",)
    gmx = await world.detector.detect("bob@gmx.com")
    assert gmx.settings is not None
    assert gmx.published_imap == ()
    assert gmx.mx_hosts == ()


async def test_mx_hosts_are_kept_for_a_provider_by_mx_and_for_an_unknown_domain(
    world: World,
) -> None:
    world.dns.mx_records["acme.example"] = ["aspmx.l.google.com"]
    world.dns.mx_records["own.example"] = ["mx.own.example"]
    assert (await world.detector.detect("a@acme.example")).mx_hosts == ("aspmx.l.google.com",)
    unknown = await world.detector.detect("a@own.example")
    assert unknown.provider is Provider.UNKNOWN
    assert unknown.mx_hosts == ("mx.own.example",)
