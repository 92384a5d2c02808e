"""Settings of the link API."""

import ssl

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from mailbox_link_contract.topics import LINK_API
from mailbox_link_shared.settings import (
    ENV_PREFIX,
    HttpSettings,
    MongoSettings,
    ServiceSettings,
    tls_context,
)

SERVICE_NAME = LINK_API  # the catalogue's name: consumer group and producer


class Settings(ServiceSettings, MongoSettings, HttpSettings):
    """Everything link-api reads from the environment (MBL_*)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    http_port: int = 8080
    registry_url: str = "http://127.0.0.1:8081"
    registry_token: SecretStr = SecretStr("")
    # A request that never gets an answer stops blocking a retry of the same mailbox after this.
    in_flight_expiry_seconds: int = 900
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

    def autoconfig_tls(self) -> ssl.SSLContext:
        """Returns the TLS context for autoconfig fetches: verified, system CAs plus extras."""
        return tls_context(self.autoconfig_ca_file)
