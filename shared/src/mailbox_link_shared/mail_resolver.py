"""Resolves a user-typed mail host once and vets every address before we connect."""

import asyncio
import ipaddress
import socket
from collections.abc import Sequence

from mailbox_link_contract.events import ServerSettings
from mailbox_link_contract.failures import FailureCode
from mailbox_link_shared.mail_probes import Endpoint, ProbeFailed
from mailbox_link_shared.network_policy import (
    MAIL_PORTS,
    HostNotAllowed,
    IPNetwork,
    PortRanges,
    describe_ports,
    is_port_allowed,
    vet_addresses,
)


async def resolve_endpoint(
    server: ServerSettings,
    allowlist: Sequence[IPNetwork],
    timeout: float,
    *,
    allowed_ports: PortRanges = MAIL_PORTS,
) -> Endpoint:
    """Returns where to connect for this server, or raises ProbeFailed (port, host not allowed;
    host not found). The port is checked first: a refused port costs no DNS query either."""
    if not is_port_allowed(server.port, allowed_ports):
        raise ProbeFailed(
            FailureCode.HOST_NOT_ALLOWED,
            f"port {server.port} is not a mail port we connect to "
            f"(allowed: {describe_ports(allowed_ports)})",
        )
    addresses = await _resolve(server.host, server.port, timeout)
    try:
        vetted = vet_addresses(addresses, allowlist)
    except HostNotAllowed:
        # Never the address: that would tell any caller what an internal name resolves to.
        raise ProbeFailed(
            FailureCode.HOST_NOT_ALLOWED, f"{server.host} is not a public mail server address"
        ) from None
    return Endpoint(
        hostname=server.host, address=vetted[0], port=server.port, security=server.security
    )


async def _resolve(host: str, port: int, timeout: float) -> list[str]:
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except TimeoutError:
        raise ProbeFailed(FailureCode.TIMEOUT, f"resolving {host} took too long") from None
    except socket.gaierror:
        raise ProbeFailed(FailureCode.HOST_NOT_FOUND, f"{host} does not resolve") from None
    # Keep the resolver's order (it prefers what the system can reach) without duplicates.
    return list(dict.fromkeys(str(info[4][0]) for info in infos))
