"""Provider detection: from an address to who hosts it and how to reach its mailbox. The
Detector implements the DetectsProviders port (ports.py) from the DNS and autoconfig adapters
and the tables of domain/providers.py.

Order (a later step runs only if the earlier ones did not decide):
1. known consumer domains (gmail.com, outlook.com, yahoo.*, icloud.com, ...) and the built-in
   settings of IMAP providers' own domains;
2. MX records: Google, Microsoft, Yahoo, AOL, iCloud;
3. settings discovery for IMAP: the domain's autoconfig document, then RFC 6186 SRV records,
   then the built-in settings of the hosting provider the MX points to;
4. otherwise unknown, with the picker.
SPF is read only as a weak hint that orders the picker's alternatives: it never names the
provider, so `v=spf1 a mx` or `include:_spf.google.com` cannot send a Microsoft mailbox to
Google's sign-in. A domain with no MX is `no_mail_server`; a DNS failure degrades to unknown.
Answers are cached per domain for the shortest TTL of the DNS records they used.
"""

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from link_api.adapters.dns_lookup import Answer, LookupFailed, NoSuchDomain, SrvTarget
from link_api.domain.providers import (
    CONSUMER_DOMAINS,
    IMAP_DOMAINS,
    PROVIDERS,
    Detection,
    Evidence,
    MailSettings,
    Provider,
    Server,
    alternatives_to,
    match_mx,
    spf_hints,
)
from link_api.ports import AutoconfigPort, DnsPort
from mailbox_link_contract.values import ConnectionSecurity

TABLE_TTL = 86400
MIN_TTL, MAX_TTL = 60, 3600
FAILURE_TTL = 30  # a DNS failure is retried soon
MAX_CACHED_DOMAINS = 10_000
SRV_SERVICES = (
    ("_imaps._tcp", ConnectionSecurity.SSL, "imap"),
    ("_imap._tcp", ConnectionSecurity.STARTTLS, "imap"),
    ("_submissions._tcp", ConnectionSecurity.SSL, "smtp"),
    ("_submission._tcp", ConnectionSecurity.STARTTLS, "smtp"),
)


@dataclass(frozen=True)
class _Published:
    """Settings the domain publishes itself, where they were found, for how long, and every
    IMAP server it names."""

    settings: MailSettings
    evidence: Evidence
    ttl: int
    imap: tuple[Server, ...]


@dataclass
class Detector:
    """Detects providers, remembering answers per domain until their TTL ends."""

    dns: DnsPort
    autoconfig: AutoconfigPort
    clock: Callable[[], float] = time.monotonic
    _cache: dict[str, tuple[float, Detection]] = field(default_factory=dict)
    _in_flight: dict[str, asyncio.Task[Detection]] = field(default_factory=dict)

    async def detect(self, address: str) -> Detection:
        """Returns who hosts this (normalized) address."""
        domain = address.rpartition("@")[2].lower()
        cached = self._cache.get(domain)
        if cached is not None and cached[0] > self.clock():
            return cached[1]
        # Simultaneous requests for one domain share one lookup.
        task = self._in_flight.get(domain)
        if task is None:
            task = asyncio.create_task(self._detect_and_cache(domain, address))
            self._in_flight[domain] = task
            task.add_done_callback(lambda _: self._in_flight.pop(domain, None))
        return await asyncio.shield(task)

    async def _detect_and_cache(self, domain: str, address: str) -> Detection:
        detection, ttl = await self._detect(domain, address)
        self._cache.pop(domain, None)
        while len(self._cache) >= MAX_CACHED_DOMAINS:  # the oldest entries go first
            self._cache.pop(next(iter(self._cache)))
        self._cache[domain] = (self.clock() + ttl, detection)
        return detection

    async def _detect(self, domain: str, address: str) -> tuple[Detection, int]:
        known = _from_tables(domain)
        if known is not None:
            return known, TABLE_TTL
        try:
            mx, txt = await asyncio.gather(self.dns.mx(domain), self._txt_or_nothing(domain))
        except NoSuchDomain:
            return _no_mail_server(domain, "the domain does not exist"), MIN_TTL
        except LookupFailed as exc:
            failed = Evidence("lookup_failed", str(exc))
            return _unknown(domain, "lookup_failed", (failed,)), FAILURE_TTL
        ttl = _clamp(min(mx.ttl, txt.ttl))
        if not mx.records:
            return _no_mail_server(domain, "no MX records"), ttl
        hints = spf_hints(txt.records)
        pattern = match_mx(mx.records)
        matched = next((h for h in mx.records if pattern and match_mx([h]) is pattern), None)
        evidence = (
            Evidence("mx", f"{matched} ({pattern.name})" if pattern and matched else
                     f"{mx.records[0]} (not a known host)"),
            *(Evidence("spf", f"includes {p.value} (a hint only: MX decides)") for p in hints),
        )  # fmt: skip
        mx_hosts = tuple(mx.records)  # kept: a link's authority compares servers with them
        if pattern is not None and pattern.provider is not Provider.IMAP:
            settings = PROVIDERS[pattern.provider].settings
            decided = _decided(domain, pattern.provider, pattern.name, evidence, settings)
            return replace(decided, mx_hosts=mx_hosts), ttl
        try:
            discovered = await self._discover(domain, address)
        except LookupFailed:
            discovered, ttl = None, FAILURE_TTL  # answer with what is left; ask again soon
        if discovered is not None:
            decided = _decided(
                domain, Provider.IMAP, "IMAP", (discovered.evidence, *evidence), discovered.settings
            )
            published = replace(decided, mx_hosts=mx_hosts, published_imap=discovered.imap)
            return published, min(ttl, discovered.ttl)
        if pattern is not None:  # a hosting provider whose IMAP settings we know
            decided = _decided(domain, Provider.IMAP, pattern.name, evidence, pattern.settings)
            return replace(decided, mx_hosts=mx_hosts), ttl
        # Nothing decided: offer the picker, SPF-hinted providers first, then custom IMAP
        # (the domain has a mail server of its own).
        picker = tuple(dict.fromkeys([*hints, Provider.IMAP, *PROVIDERS]))
        return replace(_unknown(domain, None, evidence, picker), mx_hosts=mx_hosts), ttl

    async def _txt_or_nothing(self, domain: str) -> Answer[list[str]]:
        # TXT only gives SPF hints: its failure must not spoil a clear MX answer.
        try:
            return await self.dns.txt(domain)
        except (LookupFailed, NoSuchDomain):
            return Answer([], MAX_TTL)

    async def _discover(self, domain: str, address: str) -> _Published | None:
        autoconfig = await self.autoconfig.fetch(domain, address)
        if autoconfig is not None:
            found = Evidence("autoconfig", autoconfig.source)
            return _Published(autoconfig.settings, found, TABLE_TTL, (autoconfig.settings.imap,))
        return await self._from_srv(domain)

    async def _from_srv(self, domain: str) -> _Published | None:
        names = [f"{service}.{domain}" for service, _, _ in SRV_SERVICES]
        results = await asyncio.gather(*(self.dns.srv(n) for n in names), return_exceptions=True)
        # A failed question counts as no answer; the result is then kept only briefly.
        nothing: Answer[list[SrvTarget]] = Answer([], FAILURE_TTL)
        answers = [r if isinstance(r, Answer) else nothing for r in results]
        found: dict[str, tuple[Server, str]] = {}
        for (service, security, kind), answer in zip(SRV_SERVICES, answers, strict=True):
            if kind not in found and answer.records:  # implicit TLS listed first: preferred
                target = answer.records[0]
                found[kind] = (Server(target.host, target.port, security), f"{service}.{domain}")
        if "imap" not in found or "smtp" not in found:
            if any(not isinstance(r, Answer) for r in results):
                raise LookupFailed(f"SRV of {domain}")
            return None
        (imap, imap_name), (smtp, smtp_name) = found["imap"], found["smtp"]
        ttl = _clamp(min(a.ttl for a in answers if a.records))
        # Every IMAP target the domain lists counts as published, not only the preferred one.
        published = tuple(
            Server(target.host, target.port, security)
            for (_, security, kind), answer in zip(SRV_SERVICES, answers, strict=True)
            if kind == "imap"
            for target in answer.records
        )
        evidence = Evidence("srv", f"{imap_name}, {smtp_name}")
        return _Published(MailSettings(imap, smtp), evidence, ttl, published)


def _from_tables(domain: str) -> Detection | None:
    provider = CONSUMER_DOMAINS.get(domain)
    if provider is not None:
        info = PROVIDERS[provider]
        evidence = (Evidence("consumer_domain", domain),)
        return _decided(domain, provider, info.name, evidence, info.settings)
    if domain in IMAP_DOMAINS:
        name, settings = IMAP_DOMAINS[domain]
        evidence = (Evidence("ispdb", f"{domain}: {name}"),)
        return _decided(domain, Provider.IMAP, name, evidence, settings)
    return None


def _decided(
    domain: str,
    provider: Provider,
    name: str,
    evidence: tuple[Evidence, ...],
    settings: MailSettings | None,
) -> Detection:
    return Detection(
        domain=domain,
        provider=provider,
        confidence="high",
        evidence=evidence,
        settings=settings,
        provider_name=name,
        alternatives=alternatives_to(provider),
    )


def _no_mail_server(domain: str, why: str) -> Detection:
    detection = _unknown(domain, "no_mail_server", (Evidence("no_mx", f"{domain}: {why}"),))
    return replace(detection, alternatives=())


def _unknown(
    domain: str,
    reason: str | None,
    evidence: tuple[Evidence, ...],
    alternatives: tuple[Provider, ...] = (),
) -> Detection:
    return Detection(
        domain=domain,
        provider=Provider.UNKNOWN,
        confidence="none",
        evidence=evidence,
        reason=reason,
        alternatives=alternatives or tuple(PROVIDERS),
    )


def _clamp(ttl: int) -> int:
    return max(MIN_TTL, min(MAX_TTL, ttl))
