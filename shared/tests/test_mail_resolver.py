"""Host names are resolved once and every address is vetted before any connection."""

import pytest

from mailbox_link_contract.events import ServerSettings
from mailbox_link_contract.failures import FailureCode
from mailbox_link_shared.mail_probes import ProbeFailed
from mailbox_link_shared.mail_resolver import resolve_endpoint
from mailbox_link_shared.network_policy import parse_networks, parse_ports


def _server(host: str) -> ServerSettings:
    return ServerSettings(host=host, port=993, security="ssl", username="u@example.org")


async def test_a_name_resolving_to_loopback_is_refused_unless_allowlisted() -> None:
    with pytest.raises(ProbeFailed) as refused:
        await resolve_endpoint(_server("localhost"), allowlist=(), timeout=5)
    assert refused.value.code is FailureCode.HOST_NOT_ALLOWED
    assert "127.0.0.1" not in refused.value.detail  # never what a name resolves to
    assert "::1" not in refused.value.detail


async def test_allowlisted_name_connects_to_the_vetted_address_and_keeps_the_name_for_tls() -> None:
    allowlist = parse_networks(["127.0.0.0/8", "::1/128"])
    endpoint = await resolve_endpoint(_server("localhost"), allowlist, timeout=5)
    assert endpoint.hostname == "localhost"
    assert endpoint.address in ("127.0.0.1", "::1")
    assert endpoint.port == 993


@pytest.mark.parametrize("address", ["10.0.0.5", "169.254.169.254", "::1"])
async def test_ip_literals_are_vetted_without_resolving(address: str) -> None:
    with pytest.raises(ProbeFailed) as refused:
        await resolve_endpoint(_server(address), parse_networks(["127.0.0.0/8"]), timeout=5)
    assert refused.value.code is FailureCode.HOST_NOT_ALLOWED


def _at_port(host: str, port: int) -> ServerSettings:
    return ServerSettings(host=host, port=port, security="ssl", username="u@example.org")


@pytest.mark.parametrize("port", [22, 80, 6379, 8080])
async def test_a_port_outside_the_mail_ports_is_refused_before_any_lookup(port: int) -> None:
    # A name that cannot resolve: refusing it as not found would mean DNS was asked first.
    with pytest.raises(ProbeFailed) as refused:
        await resolve_endpoint(_at_port("nowhere.invalid", port), allowlist=(), timeout=5)
    assert refused.value.code is FailureCode.HOST_NOT_ALLOWED
    assert f"port {port} is not a mail port" in refused.value.detail
    assert "993" in refused.value.detail  # names what is allowed


async def test_configured_port_ranges_are_allowed_and_replace_the_defaults() -> None:
    allowlist = parse_networks(["127.0.0.0/8"])
    ports = parse_ports(["993", "32768-60999"])
    endpoint = await resolve_endpoint(
        _at_port("127.0.0.1", 40000), allowlist, timeout=5, allowed_ports=ports
    )
    assert endpoint.port == 40000
    with pytest.raises(ProbeFailed) as refused:
        await resolve_endpoint(_at_port("127.0.0.1", 587), allowlist, 5, allowed_ports=ports)
    assert refused.value.code is FailureCode.HOST_NOT_ALLOWED
