import pytest

from mailbox_link_shared.network_policy import HostNotAllowed, parse_networks, vet_addresses


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
