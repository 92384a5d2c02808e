"""What the verifier's handlers work with: resolving a typed host to a vetted address and
logging in there (both implemented in shared's mail_resolver and mail_probes, which the OAuth
broker uses too, and faked in unit tests), the store of pending requests, and the proof of
ownership's relay; wired in bootstrap."""

import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from imap_verifier.domain.ownership import ProofMailSender, ProofPolicy
from imap_verifier.domain.pending import StartReason
from imap_verifier.login_limits import LoginLimits
from mailbox_link_contract.events import ServerSettings, utc_now
from mailbox_link_shared.crypto import SecretBox
from mailbox_link_shared.mail_probes import Endpoint, Probe
from mailbox_link_shared.network_policy import IPNetwork
from mailbox_link_shared.publishing import EventPublisher

Resolve = Callable[[ServerSettings, Sequence[IPNetwork], float], Awaitable[Endpoint]]


class PendingStore(Protocol):
    """Requests waiting for their reservation (adapters/pending_store.py)."""

    async def save_request(self, link_id: str, event_json: str, now: datetime) -> None: ...
    async def save_reservation(
        self, link_id: str, reserved_until: datetime, now: datetime
    ) -> None: ...
    async def ready_request(self, link_id: str, now: datetime) -> str | None: ...
    async def claim_start(self, link_id: str, reason: StartReason, now: datetime) -> bool: ...
    async def discard(self, link_id: str) -> None: ...


@dataclass(frozen=True)
class OwnershipProof:
    """How proofs of ownership are mailed: the relay (None: not configured) and the words."""

    sender: ProofMailSender | None
    policy: ProofPolicy
    from_address: str = "verify@mailbox-link.invalid"
    product: str = "mailbox-link"


@dataclass(frozen=True)
class VerifierDeps:
    """What the handlers work with; wired in bootstrap, faked in unit tests."""

    publisher: EventPublisher
    secret_box: SecretBox
    resolve: Resolve
    probe_imap: Probe
    probe_smtp: Probe
    tls: ssl.SSLContext
    allowlist: Sequence[IPNetwork]
    timeout: float
    store: PendingStore
    proof: OwnershipProof
    clock: Callable[[], datetime] = utc_now
    # Rate limits on the logins made for others (login_limits.py); None: unlimited (unit tests).
    login_limits: LoginLimits | None = None
