"""Typed settings every service builds on; all read from environment variables prefixed MBL_."""

import ssl
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mailbox_link_contract.topics import CATALOGUE
from mailbox_link_shared.crypto import SecretBox
from mailbox_link_shared.network_policy import (
    DEFAULT_MAIL_PORTS,
    IPNetwork,
    PortRanges,
    parse_networks,
    parse_ports,
)
from mailbox_link_shared.scopes import (
    DEFAULT_SCOPES,
    CallerKey,
    Scope,
    caller_keys,
    key_configuration_errors,
)

ENV_PREFIX = "MBL_"


def environment_variables(*classes: type[BaseSettings]) -> set[str]:
    """The environment variables these settings classes read: MBL_<FIELD>, or a field's own
    name when it has one (the standard OTEL_* variables). For checks of deploy files."""
    names = set()
    for settings in classes:
        for field_name, field in settings.model_fields.items():
            alias = field.validation_alias
            names.add(alias if isinstance(alias, str) else f"{ENV_PREFIX}{field_name.upper()}")
    return names


_TOPIC_NAMES = {spec.name for spec in CATALOGUE}
_KEPT_FOREVER = {spec.name for spec in CATALOGUE if spec.retention is None}


class KafkaSettings(BaseSettings):
    """Where Kafka is, the topic namespace, and how this deployment's topics are made."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    # Prepended to every topic and database name, so several environments can share one
    # Kafka cluster and one MongoDB (and tests can run isolated stacks side by side).
    namespace: str = Field(default="mailbox-link", pattern=r"^[a-z0-9][a-z0-9-]{0,40}$")
    kafka_create_topics: bool = Field(
        default=True,
        description="Services create missing topics at start-up. Production sets false and runs "
        "`python -m mailbox_link_shared.topics ensure` once per release (deploy/README.md).",
    )
    kafka_replication_factor: int = Field(
        default=1, ge=1, le=7, description="Copies of every new topic; 3 in production."
    )
    kafka_min_insync_replicas: int | None = Field(
        default=None,
        ge=1,
        description="min.insync.replicas of new topics (2 with 3 copies); unset: the broker's.",
    )
    kafka_topic_partitions: dict[str, int] = Field(
        default_factory=dict,
        description='Partitions of new topics by name, e.g. {"link-requests.v1": 12}; the '
        "catalogue's counts otherwise. Consumers scale up to this many replicas.",
    )
    kafka_topic_retention_hours: dict[str, int] = Field(
        default_factory=dict,
        description='Retention by topic name, e.g. {"dead-letters.v1": 2160}; topics the '
        "catalogue keeps for ever (readers rebuild their views from them) cannot be given one.",
    )

    @field_validator("kafka_topic_partitions", "kafka_topic_retention_hours")
    @classmethod
    def _known_topics_positive(cls, values: dict[str, int]) -> dict[str, int]:
        for name, value in values.items():
            if name not in _TOPIC_NAMES:
                known = ", ".join(sorted(_TOPIC_NAMES))
                raise ValueError(f"unknown topic {name!r}: name one of {known}")
            if value < 1:
                raise ValueError(f"{name}: must be at least 1, not {value}")
        return values

    @field_validator("kafka_topic_retention_hours")
    @classmethod
    def _forever_stays_forever(cls, hours: dict[str, int]) -> dict[str, int]:
        kept = sorted(set(hours) & _KEPT_FOREVER)
        if kept:
            raise ValueError(
                f"{', '.join(kept)} must be kept for ever (readers rebuild their views from "
                "them): remove it from MBL_KAFKA_TOPIC_RETENTION_HOURS"
            )
        return hours

    @model_validator(mode="after")
    def _min_insync_reachable(self) -> "KafkaSettings":
        wanted = self.kafka_min_insync_replicas
        if wanted is not None and wanted > self.kafka_replication_factor:
            raise ValueError(
                f"MBL_KAFKA_MIN_INSYNC_REPLICAS={wanted} exceeds MBL_KAFKA_REPLICATION_FACTOR="
                f"{self.kafka_replication_factor}: no write could ever succeed; lower it"
            )
        return self


class ServiceSettings(KafkaSettings):
    """What every service needs: Kafka, the secret keys, logging, its topic namespace."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)
    encryption_keys: dict[str, SecretStr] = Field(
        default_factory=dict,
        description='JSON object of key id to base64 32-byte key, e.g. {"k1": "..."}',
    )
    encryption_key_id: str = ""
    log_level: str = "INFO"
    log_format: Literal["json", "text"] = Field(
        default="json",
        description="json: one JSON object per line on stderr (for log collectors); text: "
        "plain lines for a person at a terminal.",
    )
    # Tracing (mailbox_link_shared.tracing) reads the standard OpenTelemetry variables, without
    # the MBL_ prefix, so an operator's usual collector set-up applies as is; unset: off.
    otel_exporter_otlp_endpoint: str = Field(
        default="",
        validation_alias="OTEL_EXPORTER_OTLP_ENDPOINT",
        description="OTLP/HTTP base URL, e.g. http://otel-collector:4318; traces go to "
        "<it>/v1/traces. Unset (and no traces endpoint): tracing is off.",
    )
    otel_exporter_otlp_traces_endpoint: str = Field(
        default="",
        validation_alias="OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        description="Full OTLP/HTTP traces URL; wins over OTEL_EXPORTER_OTLP_ENDPOINT.",
    )
    consumer_concurrency: int = Field(
        default=8,
        ge=1,
        le=100,
        description="Events one process handles at the same time; the next starts when one ends.",
    )

    stop_grace_seconds: float = Field(
        default=5.0,
        ge=0,
        le=300,
        description="On SIGTERM, how long events in progress may run on before they are let go "
        "uncommitted (another replica does them again). It must leave a few seconds to commit "
        "and leave the group inside the platform's kill deadline: 5 s fits `docker stop`'s and "
        "`podman stop`'s 10 s; the manifests give 20 s of a 30 s grace period, so a mail check "
        "(15 s at most) is never cut off by a rolling update.",
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
            "Connections per process. Any number is safe for the registry, whose decisions are "
            "unique inserts (docs/adr/0013)."
        ),
    )


class MailCheckSettings(BaseSettings):
    """How a service that logs in to mailboxes (verifier, OAuth broker) reaches mail servers."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    verifier_ca_file: str | None = Field(
        default=None, description="Extra CA certificates (PEM) to trust beside the system store."
    )
    verifier_allowed_networks: list[str] = Field(
        default_factory=list,
        description="CIDR blocks mail checks may reach although they are not public, "
        'e.g. ["127.0.0.0/8"] for tests. Empty in production.',
    )
    verifier_allowed_ports: list[int | str] = Field(
        default_factory=lambda: list[int | str](DEFAULT_MAIL_PORTS),
        description="Ports mail checks may dial, single or as ranges, e.g. "
        '[993, 587, "32768-60999"]; any other port is refused before connecting. Defaults '
        "to the standard IMAP, POP3 and SMTP ports and 2525.",
    )
    verifier_timeout_seconds: float = Field(default=15.0, gt=0, le=120)

    @field_validator("verifier_allowed_ports")
    @classmethod
    def _ports_parse(cls, ports: list[int | str]) -> list[int | str]:
        parse_ports(ports)  # raises ValueError naming the bad entry
        return ports

    def allowlist(self) -> tuple[IPNetwork, ...]:
        """Returns the allowlisted networks."""
        return parse_networks(self.verifier_allowed_networks)

    def allowed_ports(self) -> PortRanges:
        """Returns the ports mail checks may dial."""
        return parse_ports(self.verifier_allowed_ports)

    def mail_tls(self) -> ssl.SSLContext:
        """Returns a verifying TLS context: the system store plus the configured CA file."""
        return tls_context(self.verifier_ca_file)


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """Returns a verifying TLS context that also trusts the given CA file, if any."""
    context = ssl.create_default_context()
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    return context


class CallerKeySettings(BaseSettings):
    """Whom a service with an HTTP API lets in, and what each caller may do (docs/adr/0017)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    service_keys: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="JSON object of calling service name to its bearer token",
    )
    service_key_scopes: dict[str, list[Scope]] = Field(
        default_factory=dict,
        description="JSON object of calling service name to the scopes its key is granted, "
        f"from {[s.value for s in Scope]}; a key not named here gets only "
        f"{sorted(DEFAULT_SCOPES)}, e.g. "
        '{"link-api": ["registry"], "sign-in": ["owner_lookup"], "ops": ["operator"]}',
    )
    service_key_accounts: dict[str, list[str]] = Field(
        default_factory=dict,
        description="JSON object of calling service name to the only account ids its key may "
        'act for, e.g. {"crm": ["acme"]}; a key not named here may act for any account',
    )
    api_docs: bool = Field(
        default=True,
        description="Serve /docs and /openapi.json (to callers with a valid key only); false: "
        "both answer 404.",
    )

    @model_validator(mode="after")
    def _keys_consistent(self) -> "CallerKeySettings":
        errors = key_configuration_errors(
            self.service_keys, self.service_key_scopes, self.service_key_accounts
        )
        if errors:
            raise ValueError("; ".join(errors))
        return self

    @field_validator("service_keys")
    @classmethod
    def _tokens_strong(cls, keys: dict[str, SecretStr]) -> dict[str, SecretStr]:
        weak = [name for name, token in keys.items() if len(token.get_secret_value()) < 24]
        if weak:
            raise ValueError(f"service tokens must be at least 24 characters: {', '.join(weak)}")
        return keys

    def caller_keys(self) -> tuple[CallerKey, ...]:
        """Returns the configured keys with their scopes and account bindings."""
        return caller_keys(self.service_keys, self.service_key_scopes, self.service_key_accounts)


class HttpSettings(CallerKeySettings):
    """How a service with an HTTP API listens and whom it lets in."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    http_host: str = "127.0.0.1"

    @field_validator("service_keys")
    @classmethod
    def _keys_present(cls, keys: dict[str, SecretStr]) -> dict[str, SecretStr]:
        if not keys:
            raise ValueError('set MBL_SERVICE_KEYS to a JSON object such as {"crm": "<token>"}')
        return keys
