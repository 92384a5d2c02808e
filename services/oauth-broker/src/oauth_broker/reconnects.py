"""Reconnect in place (docs/adr/0019): a link the registry reserved to reconnect its owner's
linked mailbox (its LinkReserved names the mailbox_id) signs in like any link, but only the
provider account the mailbox was linked with may sign in; once the registry announces
MailboxReconnected, the mailbox's grant takes the new tokens and is kept fresh again.

Kept apart from sign_in.py and token_upkeep.py: the sign-in calls one check from here.
"""

import logging

from mailbox_link_contract.events import (
    LinkRejected,
    LinkReserved,
    MailboxReconnected,
    ProviderType,
)
from mailbox_link_contract.failures import FailureCode
from oauth_broker.adapters.oauth_client import SignedInMailbox
from oauth_broker.domain.grants import GrantStatus, StoredGrant, TokenGrant
from oauth_broker.domain.mailbox_identity import matches_any
from oauth_broker.domain.outcomes import AuthorizationFailed, ProviderRefused, ProviderUnreachable
from oauth_broker.domain.sessions import LinkToAuthorize
from oauth_broker.ports import BrokerDeps

logger = logging.getLogger(__name__)

# Revoking one token at these providers revokes every grant the user gave our app, the new
# one included: the old tokens of a reconnected mailbox are only deleted there. A generic
# OpenID provider may keep one grant per account and client (panva's oidc-provider reuses it
# for a new sign-in), so revoking the old refresh token could end the new one too.
_REVOCATION_ENDS_EVERY_GRANT = frozenset({ProviderType.GOOGLE, ProviderType.OIDC})


async def note_reconnect(event: LinkReserved, deps: BrokerDeps) -> None:
    """Remembers which mailbox a reconnect link reconnects; called before its sign-in is
    offered, so the callback always knows it is one."""
    data = event.data
    if data.mailbox_id is not None and data.provider is not ProviderType.IMAP:
        await deps.store.note_reconnect(data.link_id, data.mailbox_id, deps.clock())


def same_account(
    subject_before: str | None,
    address_before: str,
    signed_in: SignedInMailbox,
    subject: str | None,
) -> bool:
    """True if the account that signed in (`subject`: the id token's `sub`, else userinfo's)
    is the one the mailbox was linked with: the same stable subject id, or the same address
    for a grant kept before subjects were."""
    if subject_before is not None:
        return subject == subject_before
    return matches_any(address_before, signed_in.addresses)


async def require_the_account_linked_before(
    link: LinkToAuthorize, signed_in: SignedInMailbox, subject: str | None, deps: BrokerDeps
) -> None:
    """For a reconnect link, raises account_mismatch unless the provider account that signed
    in is the one the mailbox was linked with."""
    mailbox_id = await deps.store.reconnect_of(link.link_id)
    if mailbox_id is None:
        return  # a link of a new mailbox
    linked = await deps.store.grant_of_mailbox(mailbox_id)
    if linked is None:
        return  # no grant kept for it: nothing to compare with (the address was checked)
    before = TokenGrant.from_json(deps.secret_box.open(linked.sealed, context=linked.address))
    subject_before = linked.subject or before.subject
    if not same_account(subject_before, linked.address, signed_in, subject):
        raise AuthorizationFailed(
            FailureCode.ACCOUNT_MISMATCH,
            f"signed in with another account than the one {linked.address} was linked with; "
            "sign in with the account you linked before",
        )


async def when_mailbox_reconnected_hand_over(event: MailboxReconnected, deps: BrokerDeps) -> None:
    """Makes the reconnect's tokens the mailbox's: the mailbox's grant takes them (its old
    tokens revoked where that revokes nothing else) and is kept fresh again. Safe to repeat:
    once handed over, the reconnect's own grant is gone."""
    data = event.data
    if data.provider is ProviderType.IMAP:
        return  # a password mailbox: no tokens
    new = await deps.store.get_grant(data.link_id)
    if new is None:
        await deps.store.forget_reconnect(data.link_id)
        return  # handed over already
    old = await deps.store.grant_of_mailbox(data.mailbox_id)
    if old is None or old.link_id == new.link_id:
        # The mailbox kept no grant: the new one is kept fresh under its own link (the
        # registry resolves a reconnect link's MailboxReconnectRequired to its mailbox).
        await deps.store.activate_grant(new.link_id, data.mailbox_id)
    else:
        await _revoke_replaced(old, new, deps)
        await deps.store.adopt_grant(old.link_id, new)
        await deps.store.delete_grant(new.link_id)
    await deps.store.forget_reconnect(data.link_id)
    logger.info("link %s reconnected mailbox %s: its tokens are kept fresh", data.link_id,
                data.mailbox_id)  # fmt: skip


async def _revoke_replaced(old: StoredGrant, new: StoredGrant, deps: BrokerDeps) -> None:
    # A refused grant's tokens are dead already; at some providers revoking would end the new.
    if old.status is not GrantStatus.ACTIVE or old.provider in _REVOCATION_ENDS_EVERY_GRANT:
        return
    client = deps.clients.get(old.provider_key)
    if client is None:
        return
    replaced = TokenGrant.from_json(deps.secret_box.open(old.sealed, context=old.address))
    fresh = TokenGrant.from_json(deps.secret_box.open(new.sealed, context=new.address))
    if replaced.refresh_token == fresh.refresh_token:
        return  # handed over already (a redelivery after a crash)
    try:
        await client.revoke(replaced.refresh_token)
    except (ProviderRefused, ProviderUnreachable) as exc:
        # Replaced anyway: nothing here uses the old tokens again.
        logger.warning("link %s: revoking the replaced tokens failed (%s)", old.link_id, exc)


async def forget_rejected_reconnect(event: LinkRejected, deps: BrokerDeps) -> None:
    """A rejected reconnect link (failed sign-in, mailbox unlinked) changes nothing of its
    mailbox; its own tokens go as any rejected link's."""
    await deps.store.forget_reconnect(event.data.link_id)
