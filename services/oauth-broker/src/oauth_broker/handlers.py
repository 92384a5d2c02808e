"""What the broker does, by what happens: the handler table of its events, and the entry points
of its HTTP callback and housekeeping. The work is in sign_in.py (a link's sign-in) and
token_upkeep.py (tokens after it); ports.py has what they work with.

Every handler is safe to repeat: sessions and grants change only by conditional updates, and a
repeated event re-publishes at most what consumers already deduplicate.
"""

from mailbox_link_contract.events import (
    LinkRejected,
    LinkRequested,
    LinkReserved,
    MailboxChecked,
    MailboxCheckRequested,
    MailboxHealthChanged,
    MailboxLinked,
    MailboxReconnected,
    MailboxUnlinked,
)
from mailbox_link_shared.routing import EventHandlers, ignore
from oauth_broker.health_checks import when_check_requested_refresh_and_log_in
from oauth_broker.ports import BrokerDeps, MailServers, OAuthProviderClient
from oauth_broker.reconnects import (
    forget_rejected_reconnect,
    note_reconnect,
    when_mailbox_reconnected_hand_over,
)
from oauth_broker.sign_in import (
    CallbackOutcome,
    CallbackResult,
    ConfirmRefusal,
    StartOutcome,
    complete_sign_in,
    confirm_sign_in,
    end_expired_sessions,
    start_sign_in,
    when_link_requested_open_session,
    when_link_reserved_offer_sign_in,
)
from oauth_broker.token_upkeep import (
    refresh_due_grants,
    refresh_grant,
    when_link_rejected_discard,
    when_mailbox_linked_keep_fresh,
    when_mailbox_unlinked_revoke,
)

__all__ = [
    "EVENT_HANDLERS",
    "BrokerDeps",
    "CallbackOutcome",
    "CallbackResult",
    "ConfirmRefusal",
    "MailServers",
    "OAuthProviderClient",
    "StartOutcome",
    "complete_sign_in",
    "confirm_sign_in",
    "end_expired_sessions",
    "refresh_due_grants",
    "refresh_grant",
    "start_sign_in",
    "when_check_requested_refresh_and_log_in",
    "when_link_rejected_discard",
    "when_link_requested_open_session",
    "when_link_reserved_offer_sign_in",
    "when_mailbox_linked_keep_fresh",
    "when_mailbox_reconnected_hand_over",
    "when_mailbox_unlinked_revoke",
]


async def when_link_reserved_note_reconnect_offer_sign_in(
    event: LinkReserved, deps: BrokerDeps
) -> None:
    """Offers the sign-in as for any link, having noted first which mailbox a reconnect link
    reconnects (reconnects.py)."""
    await note_reconnect(event, deps)
    await when_link_reserved_offer_sign_in(event, deps)


async def when_link_rejected_discard_all(event: LinkRejected, deps: BrokerDeps) -> None:
    """Forgets a rejected link's sign-in and tokens, and what it was to reconnect."""
    await when_link_rejected_discard(event, deps)
    await forget_rejected_reconnect(event, deps)


EVENT_HANDLERS: EventHandlers[BrokerDeps] = {
    LinkRequested: when_link_requested_open_session,
    LinkReserved: when_link_reserved_note_reconnect_offer_sign_in,
    MailboxLinked: when_mailbox_linked_keep_fresh,
    LinkRejected: when_link_rejected_discard_all,
    MailboxReconnected: when_mailbox_reconnected_hand_over,
    MailboxUnlinked: when_mailbox_unlinked_revoke,
    MailboxCheckRequested: when_check_requested_refresh_and_log_in,
    # Our own answers (and the imap-verifier's), and the registry's verdict on them: nothing
    # for the broker to do (a reconnect_required mailbox's grant stays until it is reconnected
    # or unlinked).
    MailboxChecked: ignore,
    MailboxHealthChanged: ignore,
}
