"""Host names are resolved once and every address is vetted before any connection."""

import pytest

from mailbox_link_contract.events import ServerSettings
from mailbox_link_contract.failures import FailureCode
from mailbox_link_shared.mail_probes import ProbeFailed
from mailbox_link_shared.mail_resolver import resolve_endpoint
from mailbox_link_shared.network_policy import parse_networks


def _server(host: str) -> ServerSettings:
    return ServerSettings(host=host, port=993, security="ssl", username="u@example.org")


async def test_a_name_resolving_to_loopback_is_refused_unless_allowlisted() -> None:
    with pytest.raises(ProbeFailed) as refused:
        await resolve_endpoint(_server("localhost"), allowlist=(), timeout=5)
    assert refused.value.code is FailureCode.HOST_NOT_ALLOWED
    assert "localhost resolves to" in refused.value.detail


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
