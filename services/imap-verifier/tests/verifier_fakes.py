"""In-memory stand-ins for the verifier's store, proof and network ports, for fast handler
tests."""

import ssl
from collections.abc import Sequence
from datetime import datetime

from imap_verifier.domain.ownership import ProofPolicy
from imap_verifier.domain.pending import StartReason
from imap_verifier.ports import OwnershipProof
from mailbox_link_contract.events import ServerSettings
from mailbox_link_contract.failures import FailureCode
from mailbox_link_shared.mail_probes import Endpoint, ProbeFailed
from mailbox_link_shared.network_policy import IPNetwork


class MemoryPendingStore:
    """The MongoPendingStore's behaviour, in dictionaries."""

    def __init__(self) -> None:
        self.requests: dict[str, str] = {}
        self.reservations: dict[str, datetime] = {}
        self.starts: dict[str, StartReason] = {}

    async def save_request(self, link_id: str, event_json: str, now: datetime) -> None:
        self.requests.setdefault(link_id, event_json)

    async def save_reservation(self, link_id: str, reserved_until: datetime, now: datetime) -> None:
        self.reservations.setdefault(link_id, reserved_until)

    async def ready_request(self, link_id: str, now: datetime) -> str | None:
        until = self.reservations.get(link_id)
        if link_id not in self.requests or until is None or until <= now:
            return None
        return self.requests[link_id]

    async def claim_start(self, link_id: str, reason: StartReason, now: datetime) -> bool:
        if link_id in self.starts:
            return False
        self.starts[link_id] = reason
        return True

    async def discard(self, link_id: str) -> None:
        self.requests.pop(link_id, None)
        self.reservations.pop(link_id, None)


NO_RELAY = OwnershipProof(sender=None, policy=ProofPolicy(deadline=1.0))


class FakeNetwork:
    """Resolves every host to a documentation address and answers probes as scripted."""

    def __init__(
        self, imap_failure: FailureCode | None = None, smtp_failure: FailureCode | None = None
    ):
        self.imap_failure = imap_failure
        self.smtp_failure = smtp_failure
        self.logins: list[tuple[str, str, str]] = []

    async def resolve(
        self, server: ServerSettings, allowlist: Sequence[IPNetwork], timeout: float
    ) -> Endpoint:
        return Endpoint(server.host, "192.0.2.10", server.port, server.security)

    async def probe_imap(
        self, ep: Endpoint, user: str, password: str, tls: ssl.SSLContext, t: float
    ) -> None:
        self.logins.append(("imap", user, password))
        if self.imap_failure:
            raise ProbeFailed(self.imap_failure, "scripted")

    async def probe_smtp(
        self, ep: Endpoint, user: str, password: str, tls: ssl.SSLContext, t: float
    ) -> None:
        self.logins.append(("smtp", user, password))
        if self.smtp_failure:
            raise ProbeFailed(self.smtp_failure, "scripted")
