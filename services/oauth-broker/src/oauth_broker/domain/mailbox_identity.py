"""Whether the mailbox a user signed in to is the one they asked to link.

The comparison is shared's `mailbox_key`: the provider-aware spelling the registry also decides
uniqueness on (Gmail dots and "+tags", googlemail.com, Outlook.com "+tags"; elsewhere only case).
"""

from mailbox_link_shared.addresses import mailbox_key


def is_same_mailbox(requested: str, signed_in: str | None) -> bool:
    """True if the signed-in address reaches the same mailbox as the requested one."""
    if not signed_in:
        return False
    return mailbox_key(requested) == mailbox_key(signed_in)


def matches_any(requested: str, signed_in: tuple[str | None, ...]) -> bool:
    """True if any of the signed-in account's addresses is the requested mailbox."""
    return any(is_same_mailbox(requested, address) for address in signed_in)
