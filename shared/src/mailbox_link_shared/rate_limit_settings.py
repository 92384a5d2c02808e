"""The rate limits' settings (MBL_RATE_LIMIT_*), read alike by link-api and the imap-verifier,
which share the limits' store; the defaults and why they are what they are: docs/adr/0015."""

from datetime import timedelta

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from mailbox_link_shared.rate_limits import BackOff, Limit
from mailbox_link_shared.settings import ENV_PREFIX

# The servers of the providers that host mailboxes for millions (Google, Microsoft, Yahoo, AOL,
# iCloud), as link-api's provider table names them (tests/test_provider_catalogue.py keeps the
# two in step).
PROVIDER_MAIL_HOSTS = frozenset(
    {
        "imap.gmail.com",
        "smtp.gmail.com",
        "outlook.office365.com",
        "smtp.office365.com",
        "smtp-mail.outlook.com",
        "imap-mail.outlook.com",
        "imap.mail.yahoo.com",
        "smtp.mail.yahoo.com",
        "imap.aol.com",
        "smtp.aol.com",
        "imap.mail.me.com",
        "smtp.mail.me.com",
    }
)


class RateLimitSettings(BaseSettings):
    """Budgets per window, and the back-off after authentication failures of one login."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    rate_limit_user_links_per_hour: int = Field(
        default=20,
        ge=1,
        description="Link requests one product user may make per hour (a person links a few "
        "mailboxes, retrying a typo now and then).",
    )
    rate_limit_account_links_per_hour: int = Field(
        default=300, ge=1, description="Link requests one product account may make per hour."
    )
    rate_limit_login_attempts_per_hour: int = Field(
        default=10,
        ge=1,
        description="Verifications one target login (username at a mail host) gets per hour, "
        "whoever asks: bounds a burst sent before any failure is known.",
    )
    rate_limit_host_logins_per_minute: int = Field(
        default=60,
        ge=1,
        description="Verifications one mail host gets per minute from all our replicas.",
    )
    rate_limit_hosts_without_host_budget: list[str] = Field(
        default_factory=lambda: sorted(PROVIDER_MAIL_HOSTS),
        description="Mail hosts the per-host budget does not apply to: the big providers' own "
        "servers, which every one of our users of that provider logs in to (a shared budget "
        "would make users wait on each other) and which guard themselves; the per-login "
        "budget and back-off still apply.",
    )
    rate_limit_free_failures: int = Field(
        default=5,
        ge=1,
        description="Authentication failures of one target login before its back-off starts.",
    )
    rate_limit_first_wait_seconds: float = Field(
        default=900.0,
        gt=0,
        description="The back-off's first wait after the latest failure; doubles with each "
        "further failure.",
    )
    rate_limit_longest_wait_seconds: float = Field(
        default=86_400.0, gt=0, description="The back-off's longest wait."
    )
    rate_limit_failure_memory_seconds: float = Field(
        default=86_400.0,
        gt=0,
        description="Failures are remembered for one to two of these periods.",
    )
    rate_limit_sweep_interval_seconds: float = Field(
        default=300.0,
        gt=0,
        description="How often expired slots are deleted on stores without TTL indexes.",
    )

    def user_limit(self) -> Limit:
        """Link requests per product user."""
        return Limit("user_links", self.rate_limit_user_links_per_hour, timedelta(hours=1))

    def account_limit(self) -> Limit:
        """Link requests per product account."""
        return Limit("account_links", self.rate_limit_account_links_per_hour, timedelta(hours=1))

    def login_limit(self) -> Limit:
        """Verifications per target login."""
        return Limit("login_attempts", self.rate_limit_login_attempts_per_hour, timedelta(hours=1))

    def host_limit(self) -> Limit:
        """Verifications per target host."""
        return Limit("host_logins", self.rate_limit_host_logins_per_minute, timedelta(minutes=1))

    def hosts_without_host_budget(self) -> frozenset[str]:
        """Hosts the per-host budget skips, compared in lower case without a trailing dot."""
        return frozenset(h.lower().rstrip(".") for h in self.rate_limit_hosts_without_host_budget)

    def back_off(self) -> BackOff:
        """The back-off after authentication failures of one target login."""
        return BackOff(
            free_failures=self.rate_limit_free_failures,
            first_wait=timedelta(seconds=self.rate_limit_first_wait_seconds),
            longest_wait=timedelta(seconds=self.rate_limit_longest_wait_seconds),
            memory=timedelta(seconds=self.rate_limit_failure_memory_seconds),
        )
