"""What link-api's handlers and its detector work with: the ports, as Protocols, implemented in
adapters/ (DNS, autoconfig, the detector) and faked in unit tests."""

from typing import Protocol

from link_api.adapters.dns_lookup import Answer, SrvTarget
from link_api.domain.providers import Detection, Discovered


class DnsPort(Protocol):
    """The DNS questions detection asks."""

    async def mx(self, domain: str) -> Answer[list[str]]: ...
    async def txt(self, domain: str) -> Answer[list[str]]: ...
    async def srv(self, name: str) -> Answer[list[SrvTarget]]: ...


class DetectsProviders(Protocol):
    """Anything that tells who hosts an address (the Detector, or a test's fake)."""

    async def detect(self, address: str) -> Detection: ...


class AutoconfigPort(Protocol):
    """Fetches a domain's autoconfig document (only over HTTPS, to public addresses)."""

    async def fetch(self, domain: str, address: str) -> Discovered | None: ...
