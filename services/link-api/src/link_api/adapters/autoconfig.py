"""Fetches a domain's autoconfig document (Thunderbird's format) without letting the user's
domain steer us into our own network.

Only HTTPS; the host is resolved by our DNS lookup and every address must be public (or
allowlisted) before we connect, to the checked address, with the name for SNI and the
certificate check. Redirects are followed by hand, at most three, each checked the same way.
Bodies over 64 KiB are refused, the whole fetch has one deadline, and the XML parser
refuses entities and DTDs.
"""

import asyncio
import ipaddress
import logging
import ssl
from collections.abc import Iterator, Sequence
from urllib.parse import quote
from xml.etree.ElementTree import Element

import httpx
from defusedxml import ElementTree
from defusedxml.common import DefusedXmlException

from link_api.adapters.dns_lookup import DnsLookup, LookupFailed, NoSuchDomain
from link_api.domain.providers import Discovered, MailSettings, Server
from mailbox_link_contract.values import ConnectionSecurity
from mailbox_link_shared.network_policy import HostNotAllowed, IPNetwork, vet_addresses

logger = logging.getLogger(__name__)
MAX_BYTES = 64 * 1024
MAX_REDIRECTS = 3
_SOCKET_TYPES = {"SSL": ConnectionSecurity.SSL, "STARTTLS": ConnectionSecurity.STARTTLS}


class Refused(Exception):
    """The document could not be fetched safely."""


class AutoconfigFetcher:
    """Looks for autoconfig.<domain>/mail/config-v1.1.xml, then the domain's .well-known."""

    def __init__(
        self,
        dns: DnsLookup,
        allowlist: Sequence[IPNetwork],
        tls: ssl.SSLContext,
        timeout: float,
        port: int = 443,
    ) -> None:
        self._dns = dns
        self._allowlist = allowlist
        self._tls = tls
        self._timeout = timeout
        self._port = "" if port == 443 else f":{port}"

    async def fetch(self, domain: str, address: str) -> Discovered | None:
        """Returns the IMAP and SMTP settings the domain publishes, if it does."""
        for url in (
            f"https://autoconfig.{domain}{self._port}/mail/config-v1.1.xml"
            f"?emailaddress={quote(address)}",
            f"https://{domain}{self._port}/.well-known/autoconfig/mail/config-v1.1.xml",
        ):
            try:
                body, final_url = await asyncio.wait_for(self._get(url), self._timeout)
                settings = parse_autoconfig(body, domain)
            except (Refused, httpx.HTTPError, TimeoutError, LookupFailed, NoSuchDomain) as exc:
                logger.info("autoconfig %s: %s", url, exc or type(exc).__name__)
                continue
            if settings is not None:
                return Discovered(settings, final_url)
        return None

    async def _get(self, url: str) -> tuple[bytes, str]:
        async with httpx.AsyncClient(verify=self._tls, timeout=self._timeout) as client:
            for _ in range(MAX_REDIRECTS + 1):
                target = httpx.URL(url)
                if target.scheme != "https" or not target.host:
                    raise Refused(f"not an https URL: {url}")
                checked = await self._checked_address(target.host)
                request = client.build_request(
                    "GET",
                    target.copy_with(host=checked),
                    headers={"Host": target.netloc.decode("ascii")},
                    extensions={"sni_hostname": target.host},
                )
                response = await client.send(request, stream=True)
                try:
                    if response.is_redirect and "location" in response.headers:
                        url = str(target.join(response.headers["location"]))
                        continue
                    if response.status_code != httpx.codes.OK:
                        raise Refused(f"HTTP {response.status_code}")
                    return await _read_capped(response), url
                finally:
                    await response.aclose()
        raise Refused("too many redirects")

    async def _checked_address(self, host: str) -> str:
        try:
            addresses = [str(ipaddress.ip_address(host))]
        except ValueError:
            addresses = await self._dns.addresses(host)
        if not addresses:
            raise Refused(f"{host} has no address")
        try:
            return vet_addresses(addresses, self._allowlist)[0]
        except HostNotAllowed as exc:
            raise Refused(f"{host}: {exc}") from None


async def _read_capped(response: httpx.Response) -> bytes:
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body.extend(chunk)
        if len(body) > MAX_BYTES:
            raise Refused("document larger than 64 KiB")
    return bytes(body)


def parse_autoconfig(document: bytes, domain: str) -> MailSettings | None:
    """Returns the first IMAP and SMTP servers of a config-v1.1 document, or None."""
    try:
        root = ElementTree.fromstring(document, forbid_dtd=True)
    except (ElementTree.ParseError, DefusedXmlException) as exc:
        raise Refused(f"not a usable XML document: {type(exc).__name__}") from None
    imap = _first_server(root.iter("incomingServer"), "imap", domain)
    smtp = _first_server(root.iter("outgoingServer"), "smtp", domain)
    return MailSettings(imap, smtp) if imap and smtp else None


def _first_server(elements: Iterator[Element], kind: str, domain: str) -> Server | None:
    for element in elements:
        if element.get("type") != kind:
            continue
        host = (element.findtext("hostname") or "").strip().lower()
        host = host.replace("%emaildomain%", domain)
        port = (element.findtext("port") or "").strip()
        security = _SOCKET_TYPES.get((element.findtext("socketType") or "").strip().upper())
        username = (element.findtext("username") or "%EMAILADDRESS%").strip()
        if host and port.isdigit() and 0 < int(port) < 65536 and security is not None:
            return Server(host, int(port), security, username)
    return None
