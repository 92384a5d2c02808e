"""Who hosts a mailbox: the provider catalogue, and the tables detection reads.

Plain data, no I/O. The tables follow Mozilla's ISPDB and the providers' own published
settings; they are data, so adding a domain or an MX pattern is a one-line change.
"""

from dataclasses import dataclass, field
from enum import StrEnum

from mailbox_link_contract.events import AuthMethod as AuthMethod  # the contract's, re-exported
from mailbox_link_contract.events import ProviderType
from mailbox_link_contract.values import ConnectionSecurity


class Provider(StrEnum):
    """Who hosts the mailbox, as far as linking is concerned."""

    GOOGLE = "google"
    MICROSOFT = "microsoft"
    YAHOO = "yahoo"
    AOL = "aol"
    ICLOUD = "icloud"
    IMAP = "imap"
    UNKNOWN = "unknown"
    # A generic OpenID Connect provider the operator configured (domain/oidc.py); which one,
    # `oidc_provider` says. Not in the tables below: its settings are the deployment's.
    OIDC = "oidc"


@dataclass(frozen=True)
class Server:
    """One mail server's address, security and login name (a template, as in autoconfig)."""

    host: str
    port: int
    security: ConnectionSecurity
    username: str = "%EMAILADDRESS%"

    def username_for(self, address: str) -> str:
        """Returns the login name for this address (%EMAILADDRESS%, %EMAILLOCALPART%, ...)."""
        local, _, domain = address.partition("@")
        return (
            self.username.replace("%EMAILADDRESS%", address)
            .replace("%EMAILLOCALPART%", local)
            .replace("%EMAILDOMAIN%", domain)
        )


@dataclass(frozen=True)
class MailSettings:
    """IMAP and SMTP servers of a mailbox."""

    imap: Server
    smtp: Server


@dataclass(frozen=True)
class Discovered:
    """Settings a domain publishes itself (autoconfig), and where they were found."""

    settings: MailSettings
    source: str


@dataclass(frozen=True)
class ProviderInfo:
    """What a provider picker shows, and what linking needs to know."""

    provider: Provider
    name: str
    auth_methods: tuple[AuthMethod, ...]
    settings: MailSettings | None = None
    help: str = ""
    app_password_url: str | None = None


def _ssl(host: str, port: int = 993) -> Server:
    return Server(host, port, ConnectionSecurity.SSL)


def _starttls(host: str, port: int = 587) -> Server:
    return Server(host, port, ConnectionSecurity.STARTTLS)


OAUTH, PASSWORD = AuthMethod.OAUTH, AuthMethod.PASSWORD
PROVIDERS: dict[Provider, ProviderInfo] = {
    Provider.GOOGLE: ProviderInfo(
        Provider.GOOGLE,
        "Google (Gmail, Google Workspace)",
        (OAUTH, PASSWORD),
        MailSettings(_ssl("imap.gmail.com"), _ssl("smtp.gmail.com", 465)),
        "Sign in with Google. To use IMAP instead, turn on 2-Step Verification and create an "
        "app password; paste it with or without the spaces Google shows.",
        "https://myaccount.google.com/apppasswords",
    ),
    Provider.MICROSOFT: ProviderInfo(
        Provider.MICROSOFT,
        "Microsoft (Outlook.com, Microsoft 365)",
        (OAUTH,),
        MailSettings(_ssl("outlook.office365.com"), _starttls("smtp.office365.com")),
        "Sign in with Microsoft. Microsoft no longer accepts passwords over IMAP or SMTP.",
    ),
    Provider.YAHOO: ProviderInfo(
        Provider.YAHOO,
        "Yahoo Mail",
        (OAUTH, PASSWORD),
        MailSettings(_ssl("imap.mail.yahoo.com"), _ssl("smtp.mail.yahoo.com", 465)),
        "Sign in with Yahoo, or generate an app password under Account security "
        "and use it instead of your Yahoo password.",
        "https://login.yahoo.com/account/security/app-passwords",
    ),
    Provider.AOL: ProviderInfo(
        Provider.AOL,
        "AOL Mail",
        (OAUTH, PASSWORD),
        MailSettings(_ssl("imap.aol.com"), _ssl("smtp.aol.com", 465)),
        "Sign in with AOL, or generate an app password under Account security "
        "and use it instead of your AOL password.",
        "https://login.aol.com/account/security/app-passwords",
    ),
    Provider.ICLOUD: ProviderInfo(
        Provider.ICLOUD,
        "iCloud Mail",
        (PASSWORD,),
        MailSettings(_ssl("imap.mail.me.com"), _starttls("smtp.mail.me.com")),
        "iCloud needs an app-specific password: at account.apple.com, open Sign-In and "
        "Security, then App-Specific Passwords. Your Apple Account password will not work.",
        "https://account.apple.com/account/manage",
    ),
    Provider.IMAP: ProviderInfo(
        Provider.IMAP,
        "Other (IMAP)",
        (PASSWORD,),
        None,
        "Any mailbox with IMAP and SMTP access: enter the servers your provider documents. "
        "If the provider uses two-step verification, create an app password.",
    ),
}

# The providers that speak for their addresses themselves, and the hosts of their own servers.
# An address they host (by its domain or its MX) links only to these hosts or by the
# provider's sign-in: a typed server elsewhere could be anyone's. Each set holds the table's
# IMAP and SMTP hosts above plus the other names the provider documents for them; compared
# case-insensitively without a trailing dot (see domain/authority.py).
PROVIDER_HOSTS: dict[Provider, frozenset[str]] = {
    Provider.GOOGLE: frozenset({"imap.gmail.com", "smtp.gmail.com"}),
    # Microsoft 365 and Outlook.com; Outlook.com also documents smtp-mail.outlook.com and the
    # older imap-mail.outlook.com.
    Provider.MICROSOFT: frozenset(
        {
            "outlook.office365.com",
            "smtp.office365.com",
            "smtp-mail.outlook.com",
            "imap-mail.outlook.com",
        }
    ),
    Provider.YAHOO: frozenset({"imap.mail.yahoo.com", "smtp.mail.yahoo.com"}),
    Provider.AOL: frozenset({"imap.aol.com", "smtp.aol.com"}),
    Provider.ICLOUD: frozenset({"imap.mail.me.com", "smtp.mail.me.com"}),
}

# Who verifies an OAuth link: the OAuth broker signs the user in at this provider.
OAUTH_PROVIDER_TYPES: dict[Provider, ProviderType] = {
    Provider.GOOGLE: ProviderType.GOOGLE,
    Provider.MICROSOFT: ProviderType.MICROSOFT,
    Provider.YAHOO: ProviderType.YAHOO,
    Provider.AOL: ProviderType.AOL,
}

# Consumer domains: the address alone decides. Yahoo Japan (yahoo.co.jp) is another company.
# fmt: off
_HOTMAIL = (
    "com", "co.uk", "fr", "de", "it", "es", "be", "ca", "co.jp", "com.ar", "com.br", "com.mx",
    "nl", "se", "no", "dk", "fi", "gr", "ch", "at", "co.in", "com.au", "co.th", "com.tr", "cl",
    "co.za", "ie", "hu", "cz", "sk", "rs", "lt", "lv", "my", "ph",
)
_LIVE = (
    "com", "co.uk", "fr", "de", "it", "nl", "be", "ca", "com.au", "com.mx", "com.ar", "jp",
    "se", "dk", "no", "at", "ch", "ie", "in", "cl", "co.za", "com.pt", "ru",
)
_OUTLOOK = (
    "com", "fr", "de", "es", "it", "jp", "be", "ie", "at", "cl", "kr", "sa", "in", "pt", "sk",
    "dk", "cz", "ph", "my", "hu", "lv", "com.br", "com.ar", "com.au", "com.gr", "com.tr",
    "com.vn", "co.id", "co.il", "co.th", "co.nz",
)
_YAHOO = (
    "com", "co.uk", "fr", "de", "it", "es", "ca", "com.au", "com.br", "co.in", "in", "com.mx",
    "com.ar", "ie", "gr", "se", "dk", "no", "fi", "pl", "ro", "at", "be", "com.sg", "com.ph",
    "com.tw", "com.hk", "com.vn", "co.id", "co.nz", "co.th", "co.za",
)
# fmt: on
CONSUMER_DOMAINS: dict[str, Provider] = {
    **dict.fromkeys(["gmail.com", "googlemail.com"], Provider.GOOGLE),
    **dict.fromkeys([f"hotmail.{s}" for s in _HOTMAIL], Provider.MICROSOFT),
    **dict.fromkeys([f"live.{s}" for s in _LIVE], Provider.MICROSOFT),
    **dict.fromkeys([f"outlook.{s}" for s in _OUTLOOK], Provider.MICROSOFT),
    **dict.fromkeys(["msn.com", "passport.com", "windowslive.com"], Provider.MICROSOFT),
    **dict.fromkeys([f"yahoo.{s}" for s in _YAHOO], Provider.YAHOO),
    **dict.fromkeys(["ymail.com", "rocketmail.com"], Provider.YAHOO),
    **dict.fromkeys(
        ["aol.com", "aim.com", "aol.co.uk", "aol.fr", "aol.de", "aol.it", "aol.es"], Provider.AOL
    ),
    **dict.fromkeys(["icloud.com", "me.com", "mac.com"], Provider.ICLOUD),
}


@dataclass(frozen=True)
class MxPattern:
    """MX host names ending in `suffix` mean this provider (and, for hosts, these settings)."""

    suffix: str
    provider: Provider
    name: str
    settings: MailSettings | None = None


MX_PATTERNS: tuple[MxPattern, ...] = (
    MxPattern("aspmx.l.google.com", Provider.GOOGLE, "Google Workspace"),
    MxPattern("googlemail.com", Provider.GOOGLE, "Google Workspace"),
    MxPattern("smtp.google.com", Provider.GOOGLE, "Google Workspace"),
    MxPattern("mail.protection.outlook.com", Provider.MICROSOFT, "Microsoft 365"),
    MxPattern("mx.microsoft", Provider.MICROSOFT, "Microsoft 365"),
    MxPattern("olc.protection.outlook.com", Provider.MICROSOFT, "Outlook.com"),
    # AOL's own MX hosts sit in Yahoo's DNS zone, so the longer suffix must come first.
    MxPattern("mx-aol.mail.gm0.yahoodns.net", Provider.AOL, "AOL"),
    MxPattern("yahoodns.net", Provider.YAHOO, "Yahoo (incl. Yahoo Small Business)"),
    MxPattern("mail.icloud.com", Provider.ICLOUD, "iCloud Mail (custom domain)"),
    # Hosting providers whose mailboxes are IMAP with known settings (ISPDB by MX).
    MxPattern(
        "zoho.com",
        Provider.IMAP,
        "Zoho Mail",
        MailSettings(_ssl("imap.zoho.com"), _ssl("smtp.zoho.com", 465)),
    ),
    MxPattern(
        "zoho.eu",
        Provider.IMAP,
        "Zoho Mail (EU)",
        MailSettings(_ssl("imap.zoho.eu"), _ssl("smtp.zoho.eu", 465)),
    ),
    MxPattern(
        "messagingengine.com",
        Provider.IMAP,
        "Fastmail",
        MailSettings(_ssl("imap.fastmail.com"), _ssl("smtp.fastmail.com", 465)),
    ),
    MxPattern(
        "secureserver.net",
        Provider.IMAP,
        "GoDaddy Workspace Email",
        MailSettings(_ssl("imap.secureserver.net"), _ssl("smtpout.secureserver.net", 465)),
    ),
    MxPattern(
        "emailsrvr.com",
        Provider.IMAP,
        "Rackspace Email",
        MailSettings(_ssl("secure.emailsrvr.com"), _ssl("secure.emailsrvr.com", 465)),
    ),
    MxPattern(
        "ionos.com",
        Provider.IMAP,
        "IONOS",
        MailSettings(_ssl("imap.ionos.com"), _starttls("smtp.ionos.com")),
    ),
    MxPattern(
        "1and1.com",
        Provider.IMAP,
        "IONOS (1&1)",
        MailSettings(_ssl("imap.ionos.com"), _starttls("smtp.ionos.com")),
    ),
    MxPattern(
        "privateemail.com",
        Provider.IMAP,
        "Namecheap Private Email",
        MailSettings(_ssl("mail.privateemail.com"), _ssl("mail.privateemail.com", 465)),
    ),
    MxPattern(
        "mail.ovh.net",
        Provider.IMAP,
        "OVHcloud",
        MailSettings(_ssl("ssl0.ovh.net"), _ssl("ssl0.ovh.net", 465)),
    ),
    MxPattern(
        "hostinger.com",
        Provider.IMAP,
        "Hostinger",
        MailSettings(_ssl("imap.hostinger.com"), _ssl("smtp.hostinger.com", 465)),
    ),
    MxPattern(
        "yandex.net",
        Provider.IMAP,
        "Yandex 360",
        MailSettings(_ssl("imap.yandex.com"), _ssl("smtp.yandex.com", 465)),
    ),
    MxPattern(
        "gmx.net",
        Provider.IMAP,
        "GMX",
        MailSettings(_ssl("imap.gmx.net"), _starttls("mail.gmx.net")),
    ),
)

# Consumer domains of IMAP providers (ISPDB by domain).
IMAP_DOMAINS: dict[str, tuple[str, MailSettings]] = {
    **dict.fromkeys(
        ["gmx.com", "gmx.net", "gmx.de", "gmx.at", "gmx.ch"],
        ("GMX", MailSettings(_ssl("imap.gmx.net"), _starttls("mail.gmx.net"))),
    ),
    "web.de": ("WEB.DE", MailSettings(_ssl("imap.web.de"), _starttls("smtp.web.de"))),
    **dict.fromkeys(
        ["zoho.com", "zohomail.com"],
        ("Zoho Mail", MailSettings(_ssl("imap.zoho.com"), _ssl("smtp.zoho.com", 465))),
    ),
    **dict.fromkeys(
        ["fastmail.com", "fastmail.fm"],
        ("Fastmail", MailSettings(_ssl("imap.fastmail.com"), _ssl("smtp.fastmail.com", 465))),
    ),
    **dict.fromkeys(
        ["yandex.com", "yandex.ru"],
        ("Yandex", MailSettings(_ssl("imap.yandex.com"), _ssl("smtp.yandex.com", 465))),
    ),
    **dict.fromkeys(
        ["mail.ru", "inbox.ru", "list.ru", "bk.ru"],
        ("Mail.ru", MailSettings(_ssl("imap.mail.ru"), _ssl("smtp.mail.ru", 465))),
    ),
    "mail.com": ("mail.com", MailSettings(_ssl("imap.mail.com"), _starttls("smtp.mail.com"))),
}

# SPF includes that hint at a provider. Weak: many domains send through Google or Microsoft
# while their mailboxes live elsewhere (the `v=spf1 a mx` support case), so never decisive.
SPF_HINTS: dict[str, Provider] = {
    "_spf.google.com": Provider.GOOGLE,
    "spf.protection.outlook.com": Provider.MICROSOFT,
    "_spf.mail.yahoo.com": Provider.YAHOO,
    "icloud.com": Provider.ICLOUD,
}


@dataclass(frozen=True)
class Evidence:
    """One fact that decided (or hinted at) the answer."""

    rule: str  # consumer_domain, mx, ispdb, autoconfig, srv, spf, no_mx, lookup_failed
    detail: str


@dataclass(frozen=True)
class Detection:
    """Who hosts an address, how sure we are, why, and what else the user could pick."""

    domain: str
    provider: Provider
    confidence: str  # high, medium, low, none
    evidence: tuple[Evidence, ...]
    settings: MailSettings | None = None
    provider_name: str = ""
    reason: str | None = None  # no_mail_server or lookup_failed when nothing could be told
    alternatives: tuple[Provider, ...] = field(default=())
    # Facts kept for deciding a link's authority (domain/authority.py): the MX hosts, most
    # preferred first (empty when MX was not asked), and the IMAP servers the domain itself
    # publishes in its autoconfig document or its SRV records (empty when it publishes none).
    mx_hosts: tuple[str, ...] = ()
    published_imap: tuple[Server, ...] = ()

    @property
    def auth_methods(self) -> tuple[AuthMethod, ...]:
        """How this provider's users may link; the first is the one to offer."""
        info = PROVIDERS.get(self.provider)
        return info.auth_methods if info else ()


def match_mx(mx_hosts: list[str]) -> MxPattern | None:
    """Returns the pattern of the most preferred MX host that matches one (hosts in order)."""
    for host in mx_hosts:
        name = host.rstrip(".").lower()
        for pattern in MX_PATTERNS:
            if name == pattern.suffix or name.endswith("." + pattern.suffix):
                return pattern
    return None


def spf_hints(txt_records: list[str]) -> list[Provider]:
    """Returns the providers an SPF record includes, in the order it names them."""
    hints: list[Provider] = []
    for record in txt_records:
        terms = record.lower().split()
        if not terms or terms[0] != "v=spf1":
            continue
        for term in terms[1:]:
            mechanism = term.lstrip("+-~?")  # the qualifier does not change what is named
            include = mechanism.removeprefix("include:")
            if mechanism.startswith("include:") and include in SPF_HINTS:
                hints.append(SPF_HINTS[include])
    return hints


def alternatives_to(provider: Provider) -> tuple[Provider, ...]:
    """Returns the other providers a picker offers ("Not Microsoft? Choose your provider")."""
    return tuple(p for p in PROVIDERS if p is not provider)
