"""DNS lookups for provider detection: MX, TXT, SRV and addresses, with short timeouts.

dnspython's asyncio resolver, so a slow DNS server never blocks the event loop. Every failure
that is not a clear "no such record" becomes LookupFailed, which detection turns into
"unknown" with the provider picker, never into an error page.
"""

from dataclasses import dataclass
from typing import Generic, TypeVar

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.rdatatype
import dns.resolver

T = TypeVar("T")
# How long a cached negative answer (no such record) lives when the server gives no TTL.
NEGATIVE_TTL = 300


class LookupFailed(Exception):
    """The DNS server did not answer usefully (timeout, SERVFAIL, refused)."""


class NoSuchDomain(Exception):
    """The domain does not exist (NXDOMAIN)."""


@dataclass(frozen=True)
class SrvTarget:
    """One SRV answer: where a service is offered, most preferred first."""

    host: str
    port: int
    priority: int
    weight: int


@dataclass(frozen=True)
class Answer(Generic[T]):
    """Records and how long they may be cached."""

    records: T
    ttl: int


class DnsLookup:
    """Asks the configured DNS servers (or the system's) with a deadline per question."""

    def __init__(self, nameservers: list[str], timeout: float) -> None:
        self._resolver = dns.asyncresolver.Resolver(configure=not nameservers)
        if nameservers:
            self._resolver.nameservers = [_nameserver(n) for n in nameservers]
        self._resolver.timeout = timeout
        self._resolver.lifetime = timeout

    async def mx(self, domain: str) -> Answer[list[str]]:
        """Returns MX hosts, most preferred first; [] when the domain has none (or null MX)."""
        answer = await self._query(domain, "MX")
        if answer is None:
            return Answer([], NEGATIVE_TTL)
        ordered = sorted(answer, key=lambda r: r.preference)
        hosts = [str(r.exchange).rstrip(".").lower() for r in ordered]
        return Answer([h for h in hosts if h], _ttl(answer))  # "0 ." is a null MX (RFC 7505)

    async def txt(self, domain: str) -> Answer[list[str]]:
        """Returns TXT strings (each record's parts joined)."""
        answer = await self._query(domain, "TXT")
        if answer is None:
            return Answer([], NEGATIVE_TTL)
        texts = [b"".join(r.strings).decode("utf-8", "replace") for r in answer]
        return Answer(texts, _ttl(answer))

    async def srv(self, name: str) -> Answer[list[SrvTarget]]:
        """Returns SRV targets by priority; [] when absent or "." (service not offered)."""
        try:
            answer = await self._query(name, "SRV")
        except NoSuchDomain:
            return Answer([], NEGATIVE_TTL)
        if answer is None:
            return Answer([], NEGATIVE_TTL)
        targets = [
            SrvTarget(str(r.target).rstrip(".").lower(), r.port, r.priority, r.weight)
            for r in answer
        ]
        usable = [t for t in targets if t.host]
        return Answer(sorted(usable, key=lambda t: (t.priority, -t.weight)), _ttl(answer))

    async def addresses(self, host: str) -> list[str]:
        """Returns the IPv4 and IPv6 addresses of a host."""
        found: list[str] = []
        for rdtype in ("A", "AAAA"):
            try:
                answer = await self._query(host, rdtype)
            except NoSuchDomain:
                return []
            if answer is not None:
                found.extend(str(r) for r in answer)
        return found

    async def _query(self, name: str, rdtype: str) -> dns.resolver.Answer | None:
        try:
            return await self._resolver.resolve(name, rdtype, search=False)
        except dns.resolver.NXDOMAIN:
            raise NoSuchDomain(name) from None
        except dns.resolver.NoAnswer:
            return None
        except (
            dns.exception.Timeout,
            dns.resolver.NoNameservers,
            dns.exception.DNSException,
        ) as exc:
            raise LookupFailed(f"{rdtype} {name}: {type(exc).__name__}") from None


def _nameserver(spec: str) -> dns.nameserver.Do53Nameserver:
    # "127.0.0.1:5353", "127.0.0.1", or "[::1]:53"
    host, _, port = (
        spec.rpartition(":") if spec.count(":") == 1 or spec.startswith("[") else (spec, "", "")
    )
    return dns.nameserver.Do53Nameserver(host.strip("[]") or spec, int(port) if port else 53)


def _ttl(answer: dns.resolver.Answer) -> int:
    return int(answer.rrset.ttl) if answer.rrset is not None else NEGATIVE_TTL
