"""Settings of the IMAP verifier."""

import ssl

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from mailbox_link_shared.network_policy import IPNetwork, parse_networks
from mailbox_link_shared.settings import ENV_PREFIX, ServiceSettings

SERVICE_NAME = "imap-verifier"


class Settings(ServiceSettings):
    """Everything the verifier reads from the environment (MBL_*)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    http_host: str = "127.0.0.1"
    http_port: int = 8082
    verifier_ca_file: str | None = Field(
        default=None, description="Extra CA certificates (PEM) to trust beside the system store."
    )
    verifier_allowed_networks: list[str] = Field(
        default_factory=list,
        description="CIDR blocks the verifier may reach although they are not public, "
        'e.g. ["127.0.0.0/8"] for tests. Empty in production.',
    )
    verifier_timeout_seconds: float = Field(default=15.0, gt=0, le=120)

    def allowlist(self) -> tuple[IPNetwork, ...]:
        """Returns the allowlisted networks."""
        return parse_networks(self.verifier_allowed_networks)

    def tls_context(self) -> ssl.SSLContext:
        """Returns a verifying TLS context: the system store plus the configured CA file."""
        context = ssl.create_default_context()
        if self.verifier_ca_file:
            context.load_verify_locations(cafile=self.verifier_ca_file)
        return context
