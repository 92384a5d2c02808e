"""Settings of the registry."""

from collections.abc import Mapping
from datetime import timedelta

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from mailbox_link_contract.topics import REGISTRY, topics_consumed_by
from mailbox_link_shared.settings import ENV_PREFIX, HttpSettings, MongoSettings, ServiceSettings
from registry.access_config import AccessSettings  # issue 17, access
from registry.domain.health import HealthPolicy
from registry.domain.plans import DEFAULT_PLAN, DEFAULT_PLANS, MAX_MAILBOXES_PER_USER

SERVICE_NAME = REGISTRY  # the catalogue's name: consumer group and producer


class Settings(ServiceSettings, MongoSettings, HttpSettings, AccessSettings):
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

    link_retention_seconds: float = Field(
        default=8 * 24 * 3600,
        gt=0,
        description="How long an ended link (rejected or unlinked) is kept before it is "
        "forgotten; longer than Kafka keeps the events it answers, so a replayed event always "
        "finds its link.",
    )
    retention_interval_seconds: float = Field(
        default=3600.0, gt=0, description="How often ended links past their retention go."
    )

    # --- mailbox health checks (issue 17, docs/adr/0023) ---------------------------------
    health_check_interval_seconds: float = Field(
        default=6 * 3600,
        ge=0,
        description="How often each linked mailbox is checked (logged in to again); 0 turns "
        "scheduled checks off (on-demand checks still work).",
    )
    health_check_jitter: float = Field(
        default=0.2,
        ge=0,
        lt=1,
        description="Each interval is the interval ± this share of it, so mailboxes linked "
        "together are not checked together.",
    )
    health_retry_seconds: float = Field(
        default=60.0,
        gt=0,
        description="A degraded mailbox's first retry; doubled with each failure, up to the "
        "interval. Also how soon a first refusal of its credentials is confirmed.",
    )
    health_auth_failures: int = Field(
        default=2,
        ge=1,
        description="Checks in a row whose credentials were refused before the mailbox is "
        "reconnect_required.",
    )
    health_check_batch: int = Field(
        default=50,
        ge=1,
        description="At most this many checks are requested per scheduler pass (bounds the "
        "verifiers' load beside their own limits).",
    )
    health_scheduler_interval_seconds: float = Field(
        default=10.0, gt=0, description="How often the scheduler looks for due checks."
    )
    health_check_timeout_seconds: float = Field(
        default=300.0,
        gt=0,
        description="A check unanswered this long is given up: the next may be requested.",
    )
    health_on_demand_checks_per_hour: int = Field(
        default=12, ge=1, description="On-demand checks of one mailbox per hour."
    )

    def health_policy(self) -> HealthPolicy:
        """The health checks' schedule and rules."""
        return HealthPolicy(
            interval=timedelta(seconds=self.health_check_interval_seconds),
            jitter=self.health_check_jitter,
            retry=timedelta(seconds=self.health_retry_seconds),
            auth_failures=self.health_auth_failures,
            batch=self.health_check_batch,
            check_timeout=timedelta(seconds=self.health_check_timeout_seconds),
            on_demand_per_hour=self.health_on_demand_checks_per_hour,
        )

    # --------------------------------------------------------------------------------------

    @property
    def reservation_ttl(self) -> timedelta:
        """The reservation lifetime as a timedelta."""
        return timedelta(seconds=self.reservation_ttl_seconds)

    @property
    def link_retention(self) -> timedelta:
        return timedelta(seconds=self.link_retention_seconds)

    @model_validator(mode="after")
    def _retention_outlives_replays(self) -> "Settings":
        longest = replayable_event_retention(self.kafka_topic_retention_hours)
        if self.link_retention <= longest:
            raise ValueError(
                f"link_retention_seconds must exceed {longest.total_seconds():.0f}, how long "
                "Kafka keeps the events a link answers (a replay would find no link): raise "
                "MBL_LINK_RETENTION_SECONDS or lower MBL_KAFKA_TOPIC_RETENTION_HOURS"
            )
        if self.link_retention <= self.reservation_ttl:
            raise ValueError("link_retention_seconds must exceed reservation_ttl_seconds")
        return self

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


def replayable_event_retention(configured_hours: Mapping[str, int] | None = None) -> timedelta:
    """How long Kafka keeps the link events the registry consumes, as configured (plan
    changes, kept for ever, need no link: they are ordered by their own time)."""
    hours = configured_hours or {}
    kept = [
        timedelta(hours=hours[spec.name]) if spec.name in hours else spec.retention
        for spec in topics_consumed_by(SERVICE_NAME)
    ]
    return max(r for r in kept if r is not None)
