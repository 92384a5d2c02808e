"""Settings of the link API."""

import ssl
from datetime import timedelta

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from mailbox_link_contract.topics import LINK_API, topics_consumed_by
from mailbox_link_shared.oidc_providers import OidcProvidersSettings
from mailbox_link_shared.rate_limit_settings import RateLimitSettings
from mailbox_link_shared.settings import (
    ENV_PREFIX,
    HttpSettings,
    MailCheckSettings,
    MongoSettings,
    ServiceSettings,
    tls_context,
)

SERVICE_NAME = LINK_API  # the catalogue's name: consumer group and producer


def longest_event_retention() -> timedelta:
    """How long Kafka keeps the events a link answers: the longest finite retention of the
    topics link-api reads (the catalogue's). mailboxes.v1 is kept for ever; a replay of it that
    comes after a link is gone changes nothing (DESIGN.md, "Retention")."""
    kept = [spec.retention for spec in topics_consumed_by(SERVICE_NAME)]
    return max(r for r in kept if r is not None)


# A day more than Kafka keeps the events: a redelivered or replayed event still finds its link.
DEFAULT_LINK_RETENTION = longest_event_retention() + timedelta(days=1)
DEFAULT_IDEMPOTENCY_KEY_RETENTION = timedelta(hours=24)  # as Stripe keeps them
# A stored request not decided for sending by then is failed (request_not_sent), not sent late.
DEFAULT_SEND_DEADLINE = timedelta(seconds=60)


# MailCheckSettings for MBL_VERIFIER_ALLOWED_PORTS: typed servers are refused at the POST
# on the same ports the verifier would refuse.
class Settings(
    ServiceSettings,
    MongoSettings,
    HttpSettings,
    MailCheckSettings,
    RateLimitSettings,
    OidcProvidersSettings,
):
    """Everything link-api reads from the environment (MBL_*); MBL_OIDC_PROVIDERS without the
    broker's fields (no secret is needed here)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    http_port: int = 8080
    registry_url: str = "http://127.0.0.1:8081"
    registry_token: SecretStr = SecretStr("")
    # A request that never gets an answer stops blocking a retry of the same mailbox after this.
    in_flight_expiry_seconds: int = 900
    link_retention_seconds: float = Field(
        default=DEFAULT_LINK_RETENTION.total_seconds(),
        gt=0,
        description="How long an ended link (linked or failed) is kept after it ended, with its "
        "recorded steps; must exceed how long Kafka keeps the topics link-api reads (the "
        "catalogue's retention), so a redelivered event still finds its link.",
    )
    idempotency_key_retention_seconds: float = Field(
        default=DEFAULT_IDEMPOTENCY_KEY_RETENTION.total_seconds(),
        gt=0,
        description="How long an Idempotency-Key replays its link; after that the same key is "
        "a new request. At most link_retention_seconds, so a key never names a forgotten link.",
    )
    retention_interval_seconds: float = Field(
        default=3600.0,
        gt=0,
        description="How often expired links, steps, claims and idempotency keys are deleted, "
        "on a store without TTL indexes (FerretDB); a store with them expires them itself.",
    )
    retention_batch_size: int = Field(
        default=500, ge=1, le=10_000, description="Documents deleted per batch of that sweep."
    )
    publish_deadline_seconds: float = Field(
        default=5.0,
        gt=0,
        le=60,
        description="How long a link request waits for Kafka to store its event. A request "
        "made while Kafka does not answer is refused 503 with Retry-After and nothing stored; "
        "one whose publish outlasts this is answered 202 and sent by the outbox relay.",
    )
    send_deadline_seconds: float = Field(
        default=DEFAULT_SEND_DEADLINE.total_seconds(),
        gt=0,
        description="A stored link request that no replica decided to send within this (all "
        "of them down, or each crashed in the window) is never sent: its link ends failed "
        "with request_not_sent and frees the mailbox for a new request.",
    )
    outbox_relay_interval_seconds: float = Field(
        default=5.0, gt=0, description="How often the relay looks for requests not sent."
    )
    outbox_relay_grace_seconds: float = Field(
        default=5.0,
        gt=0,
        description="How long a request may stay unsent before the relay carries it on "
        "(a POST normally sends it within milliseconds).",
    )
    outbox_relay_batch_size: int = Field(default=200, ge=1, le=10_000)
    test_pause_file: str | None = Field(
        default=None,
        description="TESTS ONLY: a file naming a crash window (stored, decided, published) "
        "where link requests then pause for good, to be SIGKILLed there.",
    )
    dns_servers: list[str] = Field(
        default_factory=list,
        description='DNS servers for provider detection, e.g. ["10.0.0.2", "127.0.0.1:5353"]; '
        "empty uses the system's",
    )
    dns_timeout_seconds: float = Field(default=2.0, gt=0, le=10)
    autoconfig_timeout_seconds: float = Field(default=3.0, gt=0, le=10)
    autoconfig_port: int = Field(default=443, ge=1, le=65535, description="Only tests change it.")
    autoconfig_allowed_networks: list[str] = Field(
        default_factory=list,
        description="Non-public CIDRs autoconfig may be fetched from (empty in production).",
    )
    autoconfig_ca_file: str | None = Field(
        default=None, description="Extra CAs trusted for autoconfig HTTPS, besides the system's."
    )

    @property
    def link_retention(self) -> timedelta:
        """How long an ended link is kept."""
        return timedelta(seconds=self.link_retention_seconds)

    @property
    def idempotency_key_retention(self) -> timedelta:
        """How long an Idempotency-Key replays."""
        return timedelta(seconds=self.idempotency_key_retention_seconds)

    @model_validator(mode="after")
    def _retention_outlives_what_needs_it(self) -> "Settings":
        longest = longest_event_retention()
        if self.link_retention <= longest:
            raise ValueError(
                f"link_retention_seconds must exceed {longest.total_seconds():.0f}, how long "
                "Kafka keeps the events a link answers (a redelivered one would find no link)"
            )
        if not self.outbox_relay_grace_seconds < self.send_deadline_seconds:
            raise ValueError(
                "outbox_relay_grace_seconds must be shorter than send_deadline_seconds"
            )
        if self.send_deadline_seconds >= self.in_flight_expiry_seconds:
            raise ValueError("send_deadline_seconds must be shorter than in_flight_expiry_seconds")
        if self.in_flight_expiry_seconds >= self.link_retention_seconds:
            raise ValueError("in_flight_expiry_seconds must be shorter than link_retention_seconds")
        if self.idempotency_key_retention > self.link_retention:
            raise ValueError(
                "idempotency_key_retention_seconds must not exceed link_retention_seconds "
                "(a replayed key would name a link already forgotten)"
            )
        return self

    def autoconfig_tls(self) -> ssl.SSLContext:
        """Returns the TLS context for autoconfig fetches: verified, system CAs plus extras."""
        return tls_context(self.autoconfig_ca_file)
