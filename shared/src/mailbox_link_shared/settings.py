"""Typed settings every service builds on; all read from environment variables prefixed MBL_."""

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mailbox_link_shared.crypto import SecretBox

ENV_PREFIX = "MBL_"


class ServiceSettings(BaseSettings):
    """What every service needs: Kafka, the secret keys, logging, its topic namespace."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    # Prepended to every topic and database name, so several environments can share one
    # Kafka cluster and one MongoDB (and tests can run isolated stacks side by side).
    namespace: str = Field(default="mailbox-link", pattern=r"^[a-z0-9][a-z0-9-]{0,40}$")
    encryption_keys: dict[str, SecretStr] = Field(
        default_factory=dict,
        description='JSON object of key id to base64 32-byte key, e.g. {"k1": "..."}',
    )
    encryption_key_id: str = ""
    log_level: str = "INFO"
    consumer_concurrency: int = Field(
        default=8,
        ge=1,
        le=100,
        description="Events of a fetched batch handled at the same time by one process.",
    )

    @field_validator("encryption_keys")
    @classmethod
    def _keys_present(cls, keys: dict[str, SecretStr]) -> dict[str, SecretStr]:
        if not keys:
            raise ValueError(
                "set MBL_ENCRYPTION_KEYS to a JSON object such as "
                '{"k1": "<python -c \'from mailbox_link_shared.crypto import generate_key; '
                "print(generate_key())'>\"}"
            )
        return keys

    def secret_box(self) -> SecretBox:
        """Returns the box that seals secrets with the active key."""
        active = self.encryption_key_id or sorted(self.encryption_keys)[-1]
        return SecretBox(self.encryption_keys, active)


class MongoSettings(BaseSettings):
    """Where a service that stores documents finds MongoDB."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    mongodb_uri: SecretStr = SecretStr("mongodb://127.0.0.1:27017")
    mongodb_max_pool_size: int = Field(
        default=100,
        ge=1,
        description=(
            "Connections per process. Use 1 with FerretDB 1.x: its SQLite backend applies "
            "concurrent updates of one document without isolation, so conditional updates are "
            "only atomic when one connection serializes them (docs/adr/0005)."
        ),
    )


class HttpSettings(BaseSettings):
    """How a service with an HTTP API listens and whom it lets in."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    http_host: str = "127.0.0.1"
    service_keys: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="JSON object of calling service name to its bearer token",
    )

    @field_validator("service_keys")
    @classmethod
    def _tokens_strong(cls, keys: dict[str, SecretStr]) -> dict[str, SecretStr]:
        if not keys:
            raise ValueError('set MBL_SERVICE_KEYS to a JSON object such as {"crm": "<token>"}')
        weak = [name for name, token in keys.items() if len(token.get_secret_value()) < 24]
        if weak:
            raise ValueError(f"service tokens must be at least 24 characters: {', '.join(weak)}")
        return keys
