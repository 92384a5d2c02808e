"""Settings of the registry's mailbox access endpoint (docs/adr/0023): the broker it asks for
OAuth tokens, the default token margin, the rate limit per caller key, the audit's retention."""

from datetime import timedelta

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from mailbox_link_shared.rate_limits import Limit
from mailbox_link_shared.settings import ENV_PREFIX
from registry.mailbox_access import RATE_LIMIT_NAME


class AccessSettings(BaseSettings):
    """MBL_BROKER_*, MBL_ACCESS_*."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    broker_url: str = Field(
        default="http://127.0.0.1:8083",
        description="The OAuth broker's internal URL, for OAuth mailboxes' access tokens.",
    )
    broker_token: SecretStr = Field(
        default=SecretStr(""),
        description="The registry's own key to the broker: listed in the broker's "
        "MBL_SERVICE_KEYS, granted only 'token_issue'.",
    )
    broker_timeout_seconds: float = Field(
        default=20.0,
        gt=0,
        le=120,
        description="How long an access waits for the broker (which may refresh the token "
        "first, or wait for another refresh of it).",
    )
    access_token_min_valid_seconds: int = Field(
        default=300,
        ge=0,
        le=3300,
        description="How long an OAuth access token handed out must still be valid when the "
        "caller does not say (min_valid_seconds); refreshed first otherwise.",
    )
    access_rate_per_minute: int = Field(
        default=600, ge=1, description="Mailbox accesses one caller key may make per minute."
    )
    access_audit_retention_days: float = Field(
        default=90, gt=0, description="How long access audit entries are kept."
    )
    access_sweep_interval_seconds: float = Field(
        default=300.0,
        gt=0,
        description="How often old audit entries and the access budget's spent slots are deleted.",
    )

    def access_limit(self) -> Limit:
        """Accesses per caller key per minute."""
        return Limit(RATE_LIMIT_NAME, self.access_rate_per_minute, timedelta(minutes=1))

    @property
    def access_audit_retention(self) -> timedelta:
        return timedelta(days=self.access_audit_retention_days)
