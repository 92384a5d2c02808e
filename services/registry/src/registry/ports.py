"""What the registry's handlers and its decision protocol work with; wired in bootstrap."""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from mailbox_link_contract.events import utc_now
from mailbox_link_shared.publishing import EventPublisher
from registry.adapters.registry_store import RegistryStore
from registry.domain.plans import PlanTable


@dataclass(frozen=True)
class RegistryDeps:
    """What the handlers work with; wired in bootstrap."""

    store: RegistryStore
    publisher: EventPublisher
    plans: PlanTable
    reservation_ttl: timedelta = timedelta(minutes=15)
    clock: Callable[[], datetime] = utc_now
