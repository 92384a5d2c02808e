"""Settings of the IMAP verifier."""

from pydantic_settings import SettingsConfigDict

from mailbox_link_contract.topics import IMAP_VERIFIER
from mailbox_link_shared.settings import ENV_PREFIX, MailCheckSettings, ServiceSettings

SERVICE_NAME = IMAP_VERIFIER  # the catalogue's name: consumer group and producer


class Settings(ServiceSettings, MailCheckSettings):
    """Everything the verifier reads from the environment (MBL_*)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    http_host: str = "127.0.0.1"
    http_port: int = 8082
