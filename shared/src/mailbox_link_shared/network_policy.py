"""Which network addresses we may connect to on a user's behalf (server-side request forgery guard).

User-typed hosts are resolved once; every address must pass; the connection then goes to a
checked address, so a DNS answer that changes between check and connect cannot slip through.
"""

import ipaddress
from collections.abc import Iterable, Sequence

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
PortRanges = tuple[range, ...]

# The ports mail checks may dial unless configured otherwise: the standard IMAP (143, 993),
# POP3 (110, 995: a person who typed one learns it is POP3) and SMTP ports (25, 465, 587),
# and 2525, the submission alternate of hosted senders (SendGrid, Mailgun, Postmark) for
# networks that block 25 and 587. Anything else (22, 80, 6379, ...) is not ours to probe.
DEFAULT_MAIL_PORTS: tuple[str, ...] = ("25", "110", "143", "465", "587", "993", "995", "2525")

# Cloud metadata endpoints; most are non-global anyway, listed so the intent survives refactoring.
CLOUD_METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)


# NAT64's well-known prefix (RFC 6052): a NAT64 gateway on our network would forward to the
# IPv4 address in its last 32 bits.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class HostNotAllowed(Exception):
    """A host resolved to an address we refuse to connect to.

    Its message never names the address: a refusal must not tell a caller what an internal
    name resolves to. The address is kept for the caller's own use, never for a reply.
    """

    def __init__(self, address: IPAddress) -> None:
        super().__init__("not a public address (private, loopback, reserved or internal)")
        self.address = address


def parse_networks(cidrs: Iterable[str]) -> tuple[IPNetwork, ...]:
    """Parses operator-configured CIDR blocks such as 127.0.0.0/8."""
    return tuple(ipaddress.ip_network(cidr.strip(), strict=False) for cidr in cidrs if cidr.strip())


def wrapped_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries to, if any: 6to4 (2002::/16), Teredo's client
    (2001::/32) or NAT64 (64:ff9b::/96). A relay or gateway would take us there."""
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def parse_ports(items: Iterable[int | str]) -> PortRanges:
    """Parses operator-configured ports: single ports (993) and ranges ("32768-60999")."""
    ranges: list[range] = []
    for item in items:
        first, _, last = str(item).strip().partition("-")
        try:
            low, high = int(first), int(last or first)
        except ValueError:
            raise ValueError(f"not a port or a port range such as 32768-60999: {item!r}") from None
        if not 1 <= low <= high <= 65535:
            raise ValueError(f"ports run from 1 to 65535, low to high: {item!r}")
        ranges.append(range(low, high + 1))
    return tuple(ranges)


MAIL_PORTS: PortRanges = parse_ports(DEFAULT_MAIL_PORTS)


def is_port_allowed(port: int, allowed: PortRanges) -> bool:
    """Tells whether mail checks may dial this port."""
    return any(port in ports for ports in allowed)


def describe_ports(allowed: PortRanges) -> str:
    """The allowed ports as an operator wrote them: "25, 143, 32768-60999"."""
    return ", ".join(
        str(ports.start) if len(ports) == 1 else f"{ports.start}-{ports.stop - 1}"
        for ports in allowed
    )


def is_address_allowed(address: IPAddress, allowlist: Sequence[IPNetwork]) -> bool:
    """Tells whether we may connect to this address: public, or explicitly allowlisted; an
    IPv6 address that wraps an IPv4 one must pass for both."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        else:
            inner = wrapped_ipv4(address)
            if inner is not None and not is_address_allowed(inner, allowlist):
                return False
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
        # Deprecated IPv6 site-local (fec0::/10): still routed inside some networks.
        or (isinstance(address, ipaddress.IPv6Address) and address.is_site_local)
    )
    return address.is_global and not special and address not in CLOUD_METADATA_ADDRESSES


def vet_addresses(addresses: Sequence[str], allowlist: Sequence[IPNetwork]) -> list[str]:
    """Returns the addresses if all are allowed; raises HostNotAllowed for the first that is not."""
    for text in addresses:
        address = ipaddress.ip_address(text.split("%", 1)[0])
        if not is_address_allowed(address, allowlist):
            raise HostNotAllowed(address)
    return list(addresses)
