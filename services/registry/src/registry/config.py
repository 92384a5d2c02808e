"""Settings of the registry."""

from datetime import timedelta

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from mailbox_link_contract.topics import REGISTRY
from mailbox_link_shared.settings import ENV_PREFIX, HttpSettings, MongoSettings, ServiceSettings
from registry.domain.plans import DEFAULT_PLAN, DEFAULT_PLANS, MAX_MAILBOXES_PER_USER

SERVICE_NAME = REGISTRY  # the catalogue's name: consumer group and producer


class Settings(ServiceSettings, MongoSettings, HttpSettings):
    """Everything the registry reads from the environment (MBL_*)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    http_port: int = 8081
    plans: dict[str, int] = Field(
        default_factory=lambda: dict(DEFAULT_PLANS),
        description='JSON object of plan name to mailboxes per user, e.g. {"free": 1}',
    )
    default_plan: str = DEFAULT_PLAN
    reservation_ttl_seconds: float = Field(
        default=15 * 60,
        gt=0,
        description="How long a link may wait for verification before its reservation lapses.",
    )
    housekeeping_interval_seconds: float = Field(
        default=10.0,
        gt=0,
        description="How often to expire lapsed reservations and finish interrupted decisions.",
    )

    @property
    def reservation_ttl(self) -> timedelta:
        """The reservation lifetime as a timedelta."""
        return timedelta(seconds=self.reservation_ttl_seconds)

    @model_validator(mode="after")
    def _plans_valid(self) -> "Settings":
        bad = {n: v for n, v in self.plans.items() if not 0 <= v <= MAX_MAILBOXES_PER_USER}
        if bad:
            raise ValueError(f"plan limits must be 0..{MAX_MAILBOXES_PER_USER}: {bad}")
        if self.default_plan not in self.plans:
            raise ValueError(
                f"default_plan {self.default_plan!r} is not one of {sorted(self.plans)}"
            )
        return self
