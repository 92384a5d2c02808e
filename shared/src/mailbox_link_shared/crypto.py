"""Authenticated encryption of secrets (passwords, tokens) before they reach Kafka, MongoDB or logs.

AES-256-GCM with a key id on every ciphertext so keys can rotate: new secrets use the active
key, old ones still open with any key still configured. The context (the mailbox address) is
bound as associated data, so a ciphertext copied onto another mailbox does not open.
"""

import base64
import os
from collections.abc import Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import SecretStr

from mailbox_link_contract.values import EncryptedSecret

KEY_BYTES = 32
NONCE_BYTES = 12


class SecretCannotBeOpened(Exception):
    """The key is unknown, or the ciphertext or its context was tampered with."""


def generate_key() -> str:
    """Returns a new random key, base64-encoded, for MBL_ENCRYPTION_KEYS."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode("ascii")


class SecretBox:
    """Seals and opens secrets with a set of keys, one of them active."""

    def __init__(self, keys: Mapping[str, SecretStr], active_key_id: str) -> None:
        if active_key_id not in keys:
            raise ValueError(f"The active key id {active_key_id!r} is not among the keys.")
        self._ciphers = {key_id: AESGCM(_decode_key(key_id, key)) for key_id, key in keys.items()}
        self._active_key_id = active_key_id

    def seal(self, plaintext: str, context: str) -> EncryptedSecret:
        """Encrypts plaintext with the active key, bound to context."""
        nonce = os.urandom(NONCE_BYTES)
        cipher = self._ciphers[self._active_key_id]
        ciphertext = cipher.encrypt(nonce, plaintext.encode("utf-8"), context.encode("utf-8"))
        return EncryptedSecret(
            key_id=self._active_key_id, nonce=_b64(nonce), ciphertext=_b64(ciphertext)
        )

    def open(self, secret: EncryptedSecret, context: str) -> str:
        """Decrypts a sealed secret, or raises SecretCannotBeOpened."""
        cipher = self._ciphers.get(secret.key_id)
        if cipher is None:
            raise SecretCannotBeOpened(f"no key with id {secret.key_id!r} is configured")
        try:
            plaintext = cipher.decrypt(
                base64.b64decode(secret.nonce),
                base64.b64decode(secret.ciphertext),
                context.encode("utf-8"),
            )
        except (InvalidTag, ValueError):
            raise SecretCannotBeOpened(
                "the ciphertext does not match its key and context"
            ) from None
        return plaintext.decode("utf-8")


def _decode_key(key_id: str, key: SecretStr) -> bytes:
    raw = base64.b64decode(key.get_secret_value())
    if len(raw) != KEY_BYTES:
        raise ValueError(
            f"Encryption key {key_id!r} must be {KEY_BYTES} random bytes, base64-encoded."
        )
    return raw


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
