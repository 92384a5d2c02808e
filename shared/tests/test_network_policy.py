import pytest
from pydantic import ValidationError

from mailbox_link_shared.network_policy import (
    MAIL_PORTS,
    HostNotAllowed,
    describe_ports,
    is_port_allowed,
    parse_networks,
    parse_ports,
    vet_addresses,
)
from mailbox_link_shared.settings import MailCheckSettings


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.100.100.200",
        "0.0.0.0",
        "224.0.0.1",
        "240.0.0.1",
        "::1",
        "fe80::1",
        "fd00:ec2::254",
        "::ffff:127.0.0.1",
    ],
)
def test_non_public_addresses_are_refused(address: str) -> None:
    with pytest.raises(HostNotAllowed):
        vet_addresses([address], allowlist=())


def test_public_addresses_pass() -> None:
    assert vet_addresses(["93.184.216.34", "2606:2800:220:1::1"], allowlist=()) == [
        "93.184.216.34",
        "2606:2800:220:1::1",
    ]


def test_one_bad_address_among_good_ones_refuses_the_host() -> None:
    with pytest.raises(HostNotAllowed):
        vet_addresses(["93.184.216.34", "10.0.0.1"], allowlist=())


def test_allowlisted_network_passes_but_nothing_else() -> None:
    allowlist = parse_networks(["127.0.0.0/8"])
    assert vet_addresses(["127.0.0.1"], allowlist) == ["127.0.0.1"]
    with pytest.raises(HostNotAllowed):
        vet_addresses(["10.0.0.1"], allowlist)


@pytest.mark.parametrize(
    "address",
    [
        "2002:a00:1::1",  # 6to4 wrapping 10.0.0.1
        "2002:7f00:1::1",  # 6to4 wrapping 127.0.0.1
        "2002:a9fe:a9fe::1",  # 6to4 wrapping the metadata address 169.254.169.254
        "2002:c0a8:101::1",  # 6to4 wrapping 192.168.1.1
        "2001:0:4136:e378:8000:63bf:f5ff:fffe",  # Teredo, client 10.0.0.1
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
        "fec0::1",  # site-local (deprecated, still routed inside some networks)
        "fec0:1:2::3",
    ],
)
def test_ipv6_addresses_wrapping_refused_ipv4_and_site_local_are_refused(address: str) -> None:
    with pytest.raises(HostNotAllowed):
        vet_addresses([address], allowlist=())


def test_6to4_of_a_public_ipv4_passes() -> None:
    assert vet_addresses(["2002:5db8:d822::1"], allowlist=()) == ["2002:5db8:d822::1"]


def test_a_refusal_does_not_name_the_address() -> None:
    with pytest.raises(HostNotAllowed) as refused:
        vet_addresses(["10.1.2.3"], allowlist=())
    assert "10.1.2.3" not in str(refused.value)


def test_ports_parse_single_ports_and_ranges() -> None:
    ports = parse_ports([993, "587", " 32768-60999 "])
    assert [p for p in (993, 587, 32768, 60999, 22, 61000) if is_port_allowed(p, ports)] == [
        993, 587, 32768, 60999,
    ]  # fmt: skip
    assert describe_ports(ports) == "993, 587, 32768-60999"


def test_default_ports_are_the_mail_ports_and_2525() -> None:
    assert describe_ports(MAIL_PORTS) == "25, 110, 143, 465, 587, 993, 995, 2525"
    for port in (22, 80, 443, 3306, 6379, 8080):
        assert not is_port_allowed(port, MAIL_PORTS)


@pytest.mark.parametrize("bad", ["0", "65536", "600-500", "imap", "1-2-3", ""])
def test_bad_port_settings_are_refused_naming_the_entry(bad: str) -> None:
    with pytest.raises(ValueError, match="port"):
        parse_ports([bad])


def test_the_port_setting_reads_ports_and_ranges_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MBL_VERIFIER_ALLOWED_PORTS", '[993, "587", "32768-60999"]')
    ports = MailCheckSettings().allowed_ports()
    assert describe_ports(ports) == "993, 587, 32768-60999"
    monkeypatch.delenv("MBL_VERIFIER_ALLOWED_PORTS")
    assert MailCheckSettings().allowed_ports() == MAIL_PORTS


def test_a_bad_port_setting_stops_the_service_naming_the_entry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MBL_VERIFIER_ALLOWED_PORTS", '[993, "imaps"]')
    with pytest.raises(ValidationError, match="imaps"):
        MailCheckSettings()
