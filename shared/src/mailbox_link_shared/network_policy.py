"""Which network addresses we may connect to on a user's behalf (server-side request forgery guard).

User-typed hosts are resolved once; every address must pass; the connection then goes to a
checked address, so a DNS answer that changes between check and connect cannot slip through.
"""

import ipaddress
from collections.abc import Iterable, Sequence

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Cloud metadata endpoints; most are non-global anyway, listed so the intent survives refactoring.
CLOUD_METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)


class HostNotAllowed(Exception):
    """A host resolved to an address we refuse to connect to."""

    def __init__(self, address: IPAddress) -> None:
        super().__init__(f"{address} is a private, loopback or reserved address")
        self.address = address


def parse_networks(cidrs: Iterable[str]) -> tuple[IPNetwork, ...]:
    """Parses operator-configured CIDR blocks such as 127.0.0.0/8."""
    return tuple(ipaddress.ip_network(cidr.strip(), strict=False) for cidr in cidrs if cidr.strip())


def is_address_allowed(address: IPAddress, allowlist: Sequence[IPNetwork]) -> bool:
    """Tells whether we may connect to this address: public, or explicitly allowlisted."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if any(address in network for network in allowlist):
        return True
    # is_global alone lets multicast through, so every special range is named.
    special = (
        address.is_multicast
        or address.is_reserved
        or address.is_loopback
        or address.is_link_local
        or address.is_private
        or address.is_unspecified
    )
    return address.is_global and not special and address not in CLOUD_METADATA_ADDRESSES


def vet_addresses(addresses: Sequence[str], allowlist: Sequence[IPNetwork]) -> list[str]:
    """Returns the addresses if all are allowed; raises HostNotAllowed for the first that is not."""
    for text in addresses:
        address = ipaddress.ip_address(text.split("%", 1)[0])
        if not is_address_allowed(address, allowlist):
            raise HostNotAllowed(address)
    return list(addresses)
