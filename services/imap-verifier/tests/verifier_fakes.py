"""In-memory stand-ins for the verifier's store and proof ports, for fast handler tests."""

from datetime import datetime

from imap_verifier.domain.ownership import ProofPolicy
from imap_verifier.domain.pending import StartReason
from imap_verifier.ports import OwnershipProof


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
