"""Validation and normalization of mailbox addresses and server host names.

A mailbox is identified everywhere by its normalized address: lower-case, ASCII (IDN domains
as A-labels). Uniqueness, Kafka keys and lookups all use that one form.
"""

import ipaddress
import re

import idna

MAX_ADDRESS_LENGTH = 254  # RFC 5321 path limit minus the angle brackets
MAX_LOCAL_PART_LENGTH = 64
MAX_DOMAIN_LENGTH = 253
MAX_LABEL_LENGTH = 63

# RFC 5322 atext; every character outside it (quotes, spaces, ,;:<>()[]\" and controls) is refused.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_ATOM = re.compile(rf"{_ATOM}(?:\.{_ATOM})*")
_LDH_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")


class InvalidAddress(ValueError):
    """The text is not a mailbox address we can link; the message says how to fix it."""


class InvalidHost(ValueError):
    """The text is not a host name or IP address; the message says how to fix it."""


def normalize_address(raw: str) -> str:
    """Returns the normalized form of an email address, or raises InvalidAddress."""
    text = raw.strip()
    if not text:
        raise InvalidAddress("Enter an email address such as name@example.com.")
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text):
        raise InvalidAddress("An email address cannot contain spaces or control characters.")
    if text.count("@") != 1:
        raise InvalidAddress("An email address has exactly one @, as in name@example.com.")
    local, domain = text.split("@")
    _check_local_part(local)
    ascii_domain = _normalize_domain(domain, InvalidAddress)
    address = f"{local.lower()}@{ascii_domain}"
    if len(address) > MAX_ADDRESS_LENGTH:
        raise InvalidAddress(f"An email address can be at most {MAX_ADDRESS_LENGTH} characters.")
    return address


# Providers that deliver one mailbox under several spellings. Gmail ignores dots and "+tags" in
# the local part and treats googlemail.com as gmail.com; Outlook.com ignores "+tags". Elsewhere
# (Workspace and Microsoft 365 domains, Yahoo, AOL, any server) only case is ignored, since an
# alias or a group address is not the same mailbox as the one that receives its mail.
_GMAIL_DOMAINS = frozenset({"gmail.com", "googlemail.com"})
_PLUS_TAG_DOMAINS = frozenset({"outlook.com", "hotmail.com", "live.com", "msn.com"})


def mailbox_key(address: str) -> str:
    """Returns the one spelling of the mailbox a normalized address delivers to.

    Uniqueness is decided on this key, so "Bob.Smith+crm@googlemail.com" and
    "bobsmith@gmail.com" cannot be linked to two accounts.
    """
    local, _, domain = address.strip().lower().rpartition("@")
    if domain in _GMAIL_DOMAINS:
        return f"{local.split('+', 1)[0].replace('.', '')}@gmail.com"
    if domain in _PLUS_TAG_DOMAINS:
        return f"{local.split('+', 1)[0]}@{domain}"
    return f"{local}@{domain}"


def _check_local_part(local: str) -> None:
    if not local:
        raise InvalidAddress("The part before the @ is empty.")
    if len(local) > MAX_LOCAL_PART_LENGTH:
        raise InvalidAddress(
            f"The part before the @ can be at most {MAX_LOCAL_PART_LENGTH} characters."
        )
    if not _DOT_ATOM.fullmatch(local):
        raise InvalidAddress(
            "The part before the @ may use letters, digits and !#$%&'*+/=?^_`{|}~- with single "
            'dots between them; it cannot contain quotes, spaces or ,;:<>()[]\\".'
        )


def _normalize_domain(domain: str, error: type[ValueError], min_labels: int = 2) -> str:
    """Returns the lower-case ASCII (A-label) form of a DNS name."""
    if not domain:
        raise error("The domain is empty; it looks like example.com.")
    try:
        ascii_domain = idna.encode(domain.rstrip("."), uts46=True).decode("ascii").lower()
    except (idna.IDNAError, UnicodeError):
        raise error(f"{domain!r} is not a valid domain name.") from None
    labels = ascii_domain.split(".")
    if len(ascii_domain) > MAX_DOMAIN_LENGTH or any(
        len(label) > MAX_LABEL_LENGTH for label in labels
    ):
        raise error("The domain name is too long.")
    if len(labels) < min_labels or not all(_LDH_LABEL.fullmatch(label) for label in labels):
        raise error(f"{domain!r} is not a valid domain name; it looks like example.com.")
    if labels[-1].isdigit():
        raise error(f"{domain!r} is not a valid domain name: the last part cannot be a number.")
    return ascii_domain


def normalize_host(raw: str) -> str:
    """Returns a server host as a lower-case ASCII name or a canonical IP, or raises InvalidHost."""
    text = raw.strip()
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    if not text or any(ch.isspace() or ch in "/:@[]" for ch in text):
        raise InvalidHost("Enter a host name such as imap.example.com, or an IP address.")
    # A server may have a single-label name (localhost, an intranet "mail"); whether we may
    # connect to it is the network policy's call, not the syntax check's.
    return _normalize_domain(text, InvalidHost, min_labels=1)
