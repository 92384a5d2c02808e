"""Plain values the events carry: how a mail server is secured, and a sealed secret."""

from enum import StrEnum

from pydantic import BaseModel, ConfigDict


class ConnectionSecurity(StrEnum):
    """How a mail connection is secured: TLS from the first byte, or upgraded with STARTTLS."""

    SSL = "ssl"
    STARTTLS = "starttls"


class EncryptedSecret(BaseModel):
    """A sealed secret as it travels in events and rests in documents (AES-256-GCM, see
    mailbox_link_shared.crypto); only a holder of the key id's key can open it."""

    model_config = ConfigDict(frozen=True)

    key_id: str
    nonce: str
    ciphertext: str
