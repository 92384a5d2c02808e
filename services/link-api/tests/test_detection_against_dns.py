"""Detection against a real DNS server (dnsmasq on 127.0.0.1) and a real HTTPS autoconfig
server, through the production adapters."""

import asyncio
import socket
import ssl
import time
from collections.abc import Iterator

import pytest

from link_api.adapters.autoconfig import AutoconfigFetcher
from link_api.adapters.detector import Detector
from link_api.adapters.dns_lookup import DnsLookup
from link_api.domain.providers import Provider
from localinfra.autoconfig_server import AutoconfigServer, Reply
from localinfra.dns import DnsRecords, DnsServer
from mailbox_link_contract.values import ConnectionSecurity
from mailbox_link_shared.network_policy import parse_networks

# Starts its own dnsmasq rather than the shared stack, so it is marked by hand.
pytestmark = pytest.mark.connected
AUTOCONFIG_IP = "127.0.0.2"  # the only address autoconfig may be fetched from in these tests
CONFIG_XML = b"""<?xml version="1.0"?>
<clientConfig version="1.1"><emailProvider id="autoconf.test">
  <incomingServer type="pop3"><hostname>pop.autoconf.test</hostname><port>995</port>
    <socketType>SSL</socketType></incomingServer>
  <incomingServer type="imap"><hostname>imap.%EMAILDOMAIN%</hostname><port>993</port>
    <socketType>SSL</socketType><username>%EMAILLOCALPART%</username></incomingServer>
  <outgoingServer type="smtp"><hostname>smtp.autoconf.test</hostname><port>587</port>
    <socketType>STARTTLS</socketType><username>%EMAILADDRESS%</username></outgoingServer>
</emailProvider></clientConfig>"""
# A complete document whose IMAP host comes from an entity: usable only if entities expand.
ENTITY_BOMB = CONFIG_XML.replace(
    b'<?xml version="1.0"?>', b'<?xml version="1.0"?><!DOCTYPE c [<!ENTITY h "imap.bomb.test">]>'
).replace(b"imap.%EMAILDOMAIN%", b"&h;")


def records() -> DnsRecords:
    return DnsRecords(
        zones=["test"],
        mx=[
            ("workspace.test", "aspmx.l.google.com", 1),
            ("workspace.test", "alt1.aspmx.l.google.com", 5),
            ("contoso.test", "contoso-test.mail.protection.outlook.com", 0),
            ("spfgoogle.test", "mx.spfgoogle.test", 10),
            ("srv.test", "mx.srv.test", 10),
            ("autoconf.test", "mx.autoconf.test", 10),
            ("wellknown.test", "mx.wellknown.test", 10),
            ("redirect.test", "mx.redirect.test", 10),
            ("bomb.test", "mx.bomb.test", 10),
            ("big.test", "mx.big.test", 10),
            ("godaddy.test", "smtp.secureserver.net", 0),
        ],
        txt=[
            ("contoso.test", "v=spf1 a mx -all"),
            ("spfgoogle.test", "v=spf1 include:_spf.google.com ~all"),
        ],
        srv=[
            ("_imaps._tcp.srv.test", "mail.srv.test", 993, 0),
            ("_imap._tcp.srv.test", "mail.srv.test", 143, 10),
            ("_submission._tcp.srv.test", "mail.srv.test", 587, 0),
        ],
        a=[
            ("autoconfig.autoconf.test", AUTOCONFIG_IP),
            ("wellknown.test", AUTOCONFIG_IP),
            ("autoconfig.redirect.test", AUTOCONFIG_IP),
            ("autoconfig.bomb.test", AUTOCONFIG_IP),
            ("autoconfig.big.test", AUTOCONFIG_IP),
            ("nomx.test", "192.0.2.10"),
        ],
    )


@pytest.fixture(scope="module")
def dns_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    server = DnsServer(tmp_path_factory.mktemp("dns"), records())
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def autoconfig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AutoconfigServer]:
    names = ("autoconfig.autoconf.test", "wellknown.test", "autoconfig.redirect.test",
             "autoconfig.bomb.test", "autoconfig.big.test")  # fmt: skip
    server = AutoconfigServer(tmp_path_factory.mktemp("autoconfig"), names, AUTOCONFIG_IP)
    server.start()
    path = "/mail/config-v1.1.xml"
    server.replies[("autoconfig.autoconf.test", path)] = Reply(body=CONFIG_XML)
    server.replies[("wellknown.test", "/.well-known/autoconfig" + path)] = Reply(body=CONFIG_XML)
    # A redirect to loopback: a domain must not steer our fetch into our own network.
    to_loopback = f"https://127.0.0.1:{server.port}{path}"
    server.replies[("autoconfig.redirect.test", path)] = Reply(302, location=to_loopback)
    server.replies[("autoconfig.bomb.test", path)] = Reply(body=ENTITY_BOMB)
    padding = b"<!--" + b"x" * 100_000 + b"-->"
    server.replies[("autoconfig.big.test", path)] = Reply(body=CONFIG_XML + padding)
    try:
        yield server
    finally:
        server.stop()


def make_detector(dns_server: str, autoconfig: AutoconfigServer, timeout: float = 2.0) -> Detector:
    dns = DnsLookup([dns_server], timeout)
    tls = ssl.create_default_context(cafile=str(autoconfig.tls.ca_file))
    fetcher = AutoconfigFetcher(
        dns, parse_networks([f"{AUTOCONFIG_IP}/32"]), tls, timeout, autoconfig.port
    )
    return Detector(dns, fetcher)


@pytest.fixture
def detector(dns_port: int, autoconfig: AutoconfigServer) -> Detector:
    return make_detector(f"127.0.0.1:{dns_port}", autoconfig)


@pytest.mark.parametrize(
    ("address", "provider"),
    [
        ("bob@gmail.com", Provider.GOOGLE),
        ("bob@googlemail.com", Provider.GOOGLE),
        ("carol@outlook.com", Provider.MICROSOFT),
        ("carol@hotmail.co.uk", Provider.MICROSOFT),
        ("carol@live.fr", Provider.MICROSOFT),
        ("dave@yahoo.co.uk", Provider.YAHOO),
        ("dave@ymail.com", Provider.YAHOO),
        ("ann@aol.com", Provider.AOL),
        ("me@icloud.com", Provider.ICLOUD),
        ("me@mac.com", Provider.ICLOUD),
    ],
)
async def test_consumer_domains_are_known_without_asking_dns(
    address: str, provider: Provider, silent_dns: str, autoconfig: AutoconfigServer
) -> None:
    # Pointed at a DNS server that never answers: the table alone must decide.
    detection = await make_detector(silent_dns, autoconfig, timeout=0.5).detect(address)
    assert detection.provider is provider
    assert [e.rule for e in detection.evidence] == ["consumer_domain"]


async def test_icloud_needs_an_app_password_with_its_servers_filled_in(
    detector: Detector,
) -> None:
    detection = await detector.detect("me@icloud.com")
    assert [m.value for m in detection.auth_methods] == ["password"]
    assert detection.settings is not None
    assert detection.settings.imap.host == "imap.mail.me.com"


async def test_google_workspace_domain_is_found_by_its_mx(detector: Detector) -> None:
    detection = await detector.detect("bob@workspace.test")
    assert detection.provider is Provider.GOOGLE
    assert detection.confidence == "high"
    assert detection.auth_methods[0].value == "oauth"
    assert detection.evidence[0].rule == "mx"


async def test_spf_a_mx_with_microsoft_mx_is_microsoft_not_google(detector: Detector) -> None:
    detection = await detector.detect("carol@contoso.test")
    assert detection.provider is Provider.MICROSOFT


async def test_google_spf_include_with_its_own_mx_is_not_google(detector: Detector) -> None:
    detection = await detector.detect("eve@spfgoogle.test")
    assert detection.provider is not Provider.GOOGLE
    assert detection.provider is Provider.UNKNOWN
    assert detection.alternatives[0] is Provider.GOOGLE  # a hint for the picker, no more
    assert "spf" in [e.rule for e in detection.evidence]


async def test_imap_settings_are_discovered_from_srv_records(detector: Detector) -> None:
    detection = await detector.detect("erin@srv.test")
    assert detection.provider is Provider.IMAP
    assert detection.settings is not None
    imap, smtp = detection.settings.imap, detection.settings.smtp
    assert (imap.host, imap.port, imap.security) == ("mail.srv.test", 993, ConnectionSecurity.SSL)
    assert (smtp.port, smtp.security) == (587, ConnectionSecurity.STARTTLS)
    assert detection.evidence[0].rule == "srv"


async def test_imap_settings_are_discovered_from_the_autoconfig_host(
    detector: Detector, autoconfig: AutoconfigServer
) -> None:
    detection = await detector.detect("erin@autoconf.test")
    assert detection.provider is Provider.IMAP
    assert detection.settings is not None
    assert detection.settings.imap.host == "imap.autoconf.test"
    assert detection.settings.imap.username_for("erin@autoconf.test") == "erin"
    assert detection.settings.smtp.security is ConnectionSecurity.STARTTLS
    assert detection.evidence[0].rule == "autoconfig"
    assert (
        "autoconfig.autoconf.test",
        "/mail/config-v1.1.xml?emailaddress=erin%40autoconf.test",
    ) in autoconfig.requests


async def test_imap_settings_are_discovered_from_the_well_known_autoconfig(
    detector: Detector,
) -> None:
    detection = await detector.detect("erin@wellknown.test")
    assert detection.provider is Provider.IMAP
    assert detection.evidence[0].detail.endswith("/.well-known/autoconfig/mail/config-v1.1.xml")


async def test_an_autoconfig_redirect_to_loopback_is_refused(
    detector: Detector, autoconfig: AutoconfigServer
) -> None:
    before = len(autoconfig.requests)
    detection = await detector.detect("erin@redirect.test")
    assert detection.provider is Provider.UNKNOWN
    # The redirect was received, the loopback target never fetched.
    hosts = [host for host, _ in autoconfig.requests[before:]]
    assert "autoconfig.redirect.test" in hosts
    assert "127.0.0.1" not in hosts


async def test_autoconfig_with_xml_entities_is_refused(detector: Detector) -> None:
    detection = await detector.detect("erin@bomb.test")
    assert detection.provider is Provider.UNKNOWN


async def test_an_autoconfig_document_over_64_kib_is_refused(detector: Detector) -> None:
    detection = await detector.detect("erin@big.test")
    assert detection.provider is Provider.UNKNOWN


async def test_a_hosting_providers_mx_gives_its_known_settings(detector: Detector) -> None:
    detection = await detector.detect("sam@godaddy.test")
    assert detection.provider is Provider.IMAP
    assert detection.settings is not None
    assert detection.settings.imap.host == "imap.secureserver.net"


async def test_a_domain_without_mx_has_no_mail_server(detector: Detector) -> None:
    detection = await detector.detect("nobody@nomx.test")
    assert detection.reason == "no_mail_server"
    assert detection.provider is Provider.UNKNOWN


async def test_a_domain_that_does_not_exist_has_no_mail_server(detector: Detector) -> None:
    detection = await detector.detect("nobody@nowhere.test")
    assert detection.reason == "no_mail_server"


async def test_a_dns_server_that_never_answers_degrades_to_unknown_in_time(
    silent_dns: str, autoconfig: AutoconfigServer
) -> None:
    started = time.monotonic()
    detection = await make_detector(silent_dns, autoconfig, timeout=0.5).detect("x@slow.test")
    assert time.monotonic() - started < 2.0
    assert detection.provider is Provider.UNKNOWN
    assert detection.reason == "lookup_failed"
    assert len(detection.alternatives) == 6


async def test_a_slow_lookup_does_not_block_the_event_loop(
    silent_dns: str, autoconfig: AutoconfigServer
) -> None:
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    ticker = asyncio.create_task(tick())
    await make_detector(silent_dns, autoconfig, timeout=0.5).detect("x@slow2.test")
    ticker.cancel()
    assert ticks > 20  # the loop kept running during the ~0.5 s lookup


@pytest.fixture(scope="module")
def silent_dns() -> Iterator[str]:
    """A UDP port that takes DNS questions and never answers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield f"127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()
