"""Which servers speak for an address: the rule behind a link's `authority` (no I/O).

Logging in to a server proves only that the server accepts the login, not that the mailbox
behind it receives the address's mail: anyone can run a Dovecot that accepts
`ceo@example.com`. So every link says why its servers speak for its address, strongest first:

1. `provider`: the address is hosted by a known provider (its domain is in the consumer
   table, or its MX is Google's, Microsoft's, Yahoo's, AOL's or iCloud's). Only that
   provider's own hosts (`PROVIDER_HOSTS`) or its sign-in may link it; any other server is
   refused (`provider_servers_required`), since it could be anyone's.
2. `published_settings`: the IMAP host and port are what the domain itself publishes (its
   autoconfig document or its `_imaps`/`_imap` SRV records), and the login is the address.
3. `same_domain`: the IMAP host shares the registrable domain (Public Suffix List) of the
   address's domain or of one of its MX hosts, and the login is the address. Whoever controls
   the domain's DNS or mail exchange controls that host. `localhost`, single labels, names
   under no public suffix (`.test`) and IP literals never count.
4. `ownership_proof`: none of those; the link is allowed, and the verifier proves ownership
   by finding a one-time message sent to the address in the typed INBOX.

The facts come from detection (domain/providers.py `Detection`), looked up before.
"""

import functools
import ipaddress
from dataclasses import dataclass

from publicsuffixlist import PublicSuffixList

from link_api.domain.link_request import CannotLink
from link_api.domain.providers import (
    CONSUMER_DOMAINS,
    PROVIDER_HOSTS,
    PROVIDERS,
    AuthMethod,
    Detection,
    Provider,
    Server,
)
from mailbox_link_contract.events import Authority, ServerSettings
from mailbox_link_shared.api_errors import ApiErrorCode

TYPED_FIELDS = ("imap.host", "smtp.host")


@dataclass(frozen=True)
class DomainFacts:
    """What is known about an address's domain when its link's authority is decided."""

    domain: str
    provider: Provider | None = None  # a provider of PROVIDER_HOSTS hosts the domain
    published_imap: tuple[Server, ...] = ()  # IMAP servers the domain publishes itself
    mx_hosts: tuple[str, ...] = ()


def facts_from(detection: Detection) -> DomainFacts:
    """Returns the facts detection found (a provider only if it is one with own hosts)."""
    provider = detection.provider if detection.provider in PROVIDER_HOSTS else None
    return DomainFacts(detection.domain, provider, detection.published_imap, detection.mx_hosts)


def facts_from_tables(domain: str) -> DomainFacts:
    """Returns what the consumer-domain table alone tells (when detection was not asked)."""
    provider = CONSUMER_DOMAINS.get(domain)
    return DomainFacts(domain, provider if provider in PROVIDER_HOSTS else None)


def same_host(a: str, b: str) -> bool:
    """Tells whether two host names are one (DNS names ignore case and the root's dot)."""
    return _host(a) == _host(b)


def authority_for(
    address: str,
    imap: ServerSettings,
    smtp: ServerSettings,
    auth: AuthMethod,
    facts: DomainFacts,
    fields: tuple[str, str] = TYPED_FIELDS,
) -> Authority:
    """Returns why these servers speak for the address, or raises CannotLink when the address
    has a known provider and a server is not the provider's own (naming `fields`: the IMAP
    field, or the SMTP one if only SMTP is foreign)."""
    if facts.provider is not None:
        _require_provider_servers(facts.domain, facts.provider, imap.host, smtp.host, fields)
        return Authority.PROVIDER
    if auth is AuthMethod.OAUTH:
        # An OAuth link logs in to the provider's own servers with the provider's sign-in,
        # and the broker checks that the account signed in is the address.
        return Authority.PROVIDER
    login_is_address = imap.username.strip().lower() == address.lower()
    if not login_is_address:
        return Authority.OWNERSHIP_PROOF
    if any(same_host(s.host, imap.host) and s.port == imap.port for s in facts.published_imap):
        return Authority.PUBLISHED_SETTINGS
    host_domain = registrable_domain(imap.host)
    owners = {registrable_domain(name) for name in (facts.domain, *facts.mx_hosts)}
    if host_domain is not None and host_domain in owners:
        return Authority.SAME_DOMAIN
    return Authority.OWNERSHIP_PROOF


def registrable_domain(host: str) -> str | None:
    """Returns the host's registrable domain (example.co.uk for imap.example.co.uk), or None
    for an IP literal, a single label or a name under no public suffix (localhost, *.test)."""
    name = _host(host)
    try:
        ipaddress.ip_address(name)
    except ValueError:
        pass
    else:
        return None
    if "." not in name:
        return None
    found = _public_suffixes().privatesuffix(name)
    return found if isinstance(found, str) else None


@functools.cache
def _public_suffixes() -> PublicSuffixList:
    # The list bundled with the package, parsed once, never fetched. Unknown TLDs are not
    # suffixes (a made-up `.test` or `.internal` names no registrable domain), and private
    # suffixes count (two users of github.io are two domains).
    return PublicSuffixList(accept_unknown=False, only_icann=False)


def _require_provider_servers(
    domain: str, provider: Provider, imap_host: str, smtp_host: str, fields: tuple[str, str]
) -> None:
    own = PROVIDER_HOSTS[provider]
    imap_foreign = _host(imap_host) not in own
    smtp_foreign = _host(smtp_host) not in own
    if not (imap_foreign or smtp_foreign):
        return
    info = PROVIDERS[provider]
    name = info.name.split(" (")[0]  # "Google (Gmail, Google Workspace)" -> "Google"
    foreign = imap_host if imap_foreign else smtp_host
    sign_in = f"sign in with {name} (send only email and terms_accepted)"
    options = []
    if AuthMethod.OAUTH in info.auth_methods:
        options.append(sign_in)
    if AuthMethod.PASSWORD in info.auth_methods and info.settings is not None:
        where = f" ({info.app_password_url})" if info.app_password_url else ""
        options.append(
            f"use {info.settings.imap.host} and {info.settings.smtp.host} "
            f"with an app password{where}"
        )
    raise CannotLink(
        ApiErrorCode.PROVIDER_SERVERS_REQUIRED,
        f"{domain} is hosted by {name}: only {name}'s own servers may link it, not {foreign}.",
        fields[0] if imap_foreign else fields[1],
        ", or ".join(options),
    )


def _host(name: str) -> str:
    return name.strip().rstrip(".").lower()
