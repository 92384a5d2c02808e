"""Settings of the link API."""

from pydantic import SecretStr
from pydantic_settings import SettingsConfigDict

from mailbox_link_shared.settings import ENV_PREFIX, HttpSettings, MongoSettings, ServiceSettings

SERVICE_NAME = "link-api"


class Settings(ServiceSettings, MongoSettings, HttpSettings):
    """Everything link-api reads from the environment (MBL_*)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    http_port: int = 8080
    registry_url: str = "http://127.0.0.1:8081"
    registry_token: SecretStr = SecretStr("")
    # A request that never gets an answer stops blocking a retry of the same mailbox after this.
    in_flight_expiry_seconds: int = 900
