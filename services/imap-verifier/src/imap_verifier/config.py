"""Settings of the IMAP verifier."""

from datetime import timedelta

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from mailbox_link_contract.topics import IMAP_VERIFIER
from mailbox_link_shared.rate_limit_settings import RateLimitSettings
from mailbox_link_shared.settings import (
    ENV_PREFIX,
    MailCheckSettings,
    MongoSettings,
    ServiceSettings,
)

SERVICE_NAME = IMAP_VERIFIER  # the catalogue's name: consumer group and producer


class Settings(ServiceSettings, MongoSettings, MailCheckSettings, RateLimitSettings):
    """Everything the verifier reads from the environment (MBL_*)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    http_host: str = "127.0.0.1"
    http_port: int = 8082
    ownership_relay_host: str | None = Field(
        default=None,
        description="The operator's SMTP relay (routing by MX) that mails ownership proofs; "
        "without it every link that needs a proof fails with ownership_unproven.",
    )
    ownership_relay_port: int = Field(default=25, ge=1, le=65535)
    ownership_proof_deadline_seconds: float = Field(
        default=120.0, gt=0, le=600, description="How long the proof message may take to arrive."
    )
    ownership_proof_from: str = "verify@mailbox-link.invalid"
    ownership_proof_product: str = Field(
        default="mailbox-link", description="The product named in the proof message."
    )
    pending_verification_ttl_seconds: float = Field(
        default=20 * 60,
        gt=0,
        description="How long a request waits for its reservation (the registry's reservation "
        "lifetime, 15 min by default, plus a margin).",
    )
    expiry_sweep_interval_seconds: float = Field(
        default=300.0,
        gt=0,
        description="How often expired pending documents are deleted (for stores without "
        "TTL indexes, such as FerretDB; harmless on MongoDB).",
    )

    @property
    def pending_lifetime(self) -> timedelta:
        """How long pending requests and reservations are kept."""
        return timedelta(seconds=self.pending_verification_ttl_seconds)
