"""Whether the mailbox a user signed in to is the one they asked to link.

Providers deliver one mailbox under several spellings. Gmail ignores dots and "+tags" in the
local part and treats googlemail.com as gmail.com; Outlook.com ignores "+tags". Elsewhere
(Workspace and Microsoft 365 domains, Yahoo, AOL) only case is ignored: an alias or a group
address is a different address from the mailbox that signs in, so it does not match.
"""

_GMAIL_DOMAINS = frozenset({"gmail.com", "googlemail.com"})
_PLUS_TAG_DOMAINS = frozenset({"outlook.com", "hotmail.com", "live.com", "msn.com"})


def canonical_mailbox(address: str) -> str:
    """Returns the one spelling of the mailbox an address delivers to."""
    local, _, domain = address.strip().lower().rpartition("@")
    if domain in _GMAIL_DOMAINS:
        return f"{local.split('+', 1)[0].replace('.', '')}@gmail.com"
    if domain in _PLUS_TAG_DOMAINS:
        return f"{local.split('+', 1)[0]}@{domain}"
    return f"{local}@{domain}"


def is_same_mailbox(requested: str, signed_in: str | None) -> bool:
    """True if the signed-in address reaches the same mailbox as the requested one."""
    if not signed_in:
        return False
    return canonical_mailbox(requested) == canonical_mailbox(signed_in)


def matches_any(requested: str, signed_in: tuple[str | None, ...]) -> bool:
    """True if any of the signed-in account's addresses is the requested mailbox."""
    return any(is_same_mailbox(requested, address) for address in signed_in)
