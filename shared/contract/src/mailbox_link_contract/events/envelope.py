"""The envelope every event carries, whatever its type."""

from datetime import UTC, datetime
from typing import Literal
from uuid import UUID, uuid4

from pydantic import BaseModel, ConfigDict, Field


def utc_now() -> datetime:
    """Returns the current time in UTC, to the millisecond (what BSON dates keep)."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


class Envelope(BaseModel):
    """Identity, type, version, time, correlation and origin of one event.

    Consumers ignore fields they do not know, so a producer may add fields within a schema
    version; removing or changing one needs a new version.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    event_id: UUID = Field(default_factory=uuid4)
    type: str
    # A consumer refuses versions it does not know (they go to the dead-letter topic); a v2
    # model overrides this with Literal[2].
    schema_version: Literal[1] = 1
    occurred_at: datetime = Field(default_factory=utc_now)
    correlation_id: str = Field(description="The link id this event belongs to.")
    producer: str = Field(description="The service that emitted the event.")

    def partition_key(self) -> bytes:
        """Returns the Kafka key: the mailbox's normalized address, so its events stay ordered."""
        data = getattr(self, "data", None)
        address: str = getattr(data, "address", "")
        return address.encode("utf-8")
