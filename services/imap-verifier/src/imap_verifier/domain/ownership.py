"""Proof of ownership: a one-time message sent to the address must arrive in the INBOX of the
account the person typed, or those servers do not speak for the address.

Logging in proves someone holds *an* account on the typed servers, not that it is the account
that receives the address's mail: anyone can run a Dovecot with a login of their choosing. So,
unless the address's authority is stronger (its provider, its published settings, its own
domain), we mail a token to the address through the operator's relay (which routes by the
domain's MX, like any mail from the internet) and look for it in the typed INBOX. Plain rules
and ports here; the relay and IMAP adapters live in adapters/.
"""

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Protocol

from mailbox_link_contract.events import Authority
from mailbox_link_contract.failures import FailureCode

logger = logging.getLogger(__name__)

# Authorities that make the typed servers speak for the address without a proof. Anything
# else, including no authority (producers before 1.3.0) and values added later, needs one.
TRUSTED_AUTHORITIES = frozenset(
    {Authority.PROVIDER, Authority.PUBLISHED_SETTINGS, Authority.SAME_DOMAIN}
)
# The header the token is searched in: every server indexes Subject, and it is short.
TOKEN_HEADER = "Subject"  # noqa: S105 - a header name, not a secret
SUBJECT_PREFIX = "Mailbox check"


def needs_proof(authority: Authority | None) -> bool:
    """Tells whether a link's servers must prove they receive the address's mail."""
    return authority not in TRUSTED_AUTHORITIES


@dataclass(frozen=True)
class ProofMessage:
    """The one-time message; the token is in the subject and the body."""

    sender: str
    recipient: str
    subject: str
    body: str
    token: str = field(repr=False)


def proof_message(sender: str, recipient: str, product: str, token: str) -> ProofMessage:
    """Writes the message a person may read in their INBOX before we delete it."""
    body = (
        f"You asked to link this mailbox ({recipient}) to {product}.\n"
        "This message proves that you receive its mail. It will be deleted automatically in a\n"
        "moment; you need not do anything.\n"
        "\n"
        "If you did not ask for this, you can ignore it: without access to this mailbox,\n"
        "nobody can link it.\n"
        "\n"
        f"One-time code: {token}\n"
    )
    return ProofMessage(sender, recipient, f"{SUBJECT_PREFIX} {token}", body, token)


class MailRefused(Exception):
    """The address does not take mail (its server refused it for good): no proof possible."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class MailNotSent(Exception):
    """The relay could not be used (down, busy, misconfigured): our problem, not the person's."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class ProofMailSender(Protocol):
    """Sends the proof message through the operator's relay (never the typed SMTP server)."""

    async def send(self, message: ProofMessage) -> None:
        """Returns once the relay accepted it; raises MailRefused or MailNotSent."""


class Inbox(Protocol):
    """The typed IMAP account's INBOX, opened read-write."""

    async def find(self, header: str, value: str) -> list[str]:
        """Returns the ids of the messages whose `header` contains `value`."""

    async def delete(self, ids: list[str]) -> None:
        """Deletes those messages for good."""


OpenInbox = Callable[[], AbstractAsyncContextManager[Inbox]]


class ProofFailed(Exception):
    """The proof did not succeed; the code and detail go to the person."""

    def __init__(self, code: FailureCode, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class ProofPolicy:
    """How long to wait for the message and how often to look."""

    deadline: float
    # Mail through a relay to a nearby server lands within milliseconds, to a far one within
    # seconds: look at once, then back off to the cap so a slow server costs few searches.
    first_delay: float = 0.25
    max_delay: float = 1.0
    backoff: float = 2.0


@dataclass
class ProofClock:
    """Time, replaceable in tests."""

    now: Callable[[], float] = time.monotonic
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep


async def prove_ownership(
    address: str,
    product: str,
    sender_address: str,
    sender: ProofMailSender | None,
    open_inbox: OpenInbox,
    policy: ProofPolicy,
    clock: ProofClock | None = None,
    new_token: Callable[[], str] = lambda: secrets.token_urlsafe(18),
) -> None:
    """Mails a token to `address` and waits for it in the typed INBOX, then deletes it.

    Returns when the proof succeeded; raises ProofFailed (ownership_unproven when the message
    did not arrive by the deadline or the address takes no mail, internal_error when our relay
    could not be used). IMAP failures of the session come out as the adapter raises them.
    """
    clock = clock or ProofClock()
    if sender is None:
        logger.error("ownership proof impossible: no relay configured (MBL_OWNERSHIP_RELAY_HOST)")
        raise ProofFailed(
            FailureCode.OWNERSHIP_UNPROVEN,
            "the operator configured no relay to send the proof message through",
        )
    token = new_token()
    # Logged in before sending: a session that cannot open must not cost the person a message.
    async with open_inbox() as inbox:
        try:
            await sender.send(proof_message(sender_address, address, product, token))
        except MailRefused as refused:
            raise ProofFailed(
                FailureCode.OWNERSHIP_UNPROVEN,
                f"mail to {address} was refused, so it cannot reach any INBOX: {refused.detail}",
            ) from None
        except MailNotSent as failed:
            logger.error("ownership proof message not sent: %s", failed.detail)
            raise ProofFailed(
                FailureCode.INTERNAL_ERROR, "the proof message could not be sent"
            ) from None
        found = await _wait_for(inbox, token, policy, clock)
        if not found:
            raise ProofFailed(
                FailureCode.OWNERSHIP_UNPROVEN,
                f"a message sent to {address} did not arrive in this account's INBOX within "
                f"{policy.deadline:g} s",
            )
        await inbox.delete(found)


async def _wait_for(inbox: Inbox, token: str, policy: ProofPolicy, clock: ProofClock) -> list[str]:
    give_up = clock.now() + policy.deadline
    delay = policy.first_delay
    while True:
        found = await inbox.find(TOKEN_HEADER, token)
        left = give_up - clock.now()
        if found or left <= 0:
            return found
        await clock.sleep(min(delay, left))
        delay = min(delay * policy.backoff, policy.max_delay)
