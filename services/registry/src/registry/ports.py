"""What the registry's handlers and its decision protocol work with; wired in bootstrap."""

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from mailbox_link_contract.events import utc_now
from mailbox_link_shared.publishing import EventPublisher
from mailbox_link_shared.rate_limits import RateLimiter
from registry.adapters.registry_store import RegistryStore
from registry.domain.health import HealthPolicy
from registry.domain.plans import PlanTable


@dataclass(frozen=True)
class RegistryDeps:
    """What the handlers work with; wired in bootstrap."""

    store: RegistryStore
    publisher: EventPublisher
    plans: PlanTable
    reservation_ttl: timedelta = timedelta(minutes=15)
    clock: Callable[[], datetime] = utc_now
    # Mailbox health checks (issue 17): the schedule, and the budget of on-demand checks
    # (None: unlimited).
    health: HealthPolicy = field(default_factory=HealthPolicy)
    check_limiter: RateLimiter | None = None
