"""The tokens a provider granted for a mailbox, and when they must be refreshed."""

import json
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from mailbox_link_contract.events import MailboxOwner, ProviderType
from mailbox_link_contract.values import EncryptedSecret


@dataclass(frozen=True)
class TokenGrant:
    """An access token, the refresh token that renews it, and what they allow; never printed."""

    access_token: str
    refresh_token: str
    expires_at: datetime
    scopes: frozenset[str]
    # The provider's stable id of the account that granted them (None: granted before it was
    # kept); sealed with the tokens, read when the mailbox is reconnected.
    subject: str | None = None

    def __repr__(self) -> str:
        return f"TokenGrant(<redacted>, expires_at={self.expires_at.isoformat()})"

    def to_json(self) -> str:
        """Returns the JSON object that gets sealed (the shape MailboxVerified documents)."""
        fields = {
            "access_token": self.access_token,
            "refresh_token": self.refresh_token,
            "expires_at": self.expires_at.isoformat(),
            "scope": " ".join(sorted(self.scopes)),
        }
        if self.subject is not None:
            fields["subject"] = self.subject
        return json.dumps(fields)

    @classmethod
    def from_json(cls, text: str) -> "TokenGrant":
        """Reads an opened JSON object back."""
        raw: dict[str, Any] = json.loads(text)
        return cls(
            access_token=str(raw["access_token"]),
            refresh_token=str(raw["refresh_token"]),
            expires_at=datetime.fromisoformat(raw["expires_at"]),
            scopes=frozenset(str(raw["scope"]).split()),
            subject=str(raw["subject"]) if raw.get("subject") else None,
        )

    def renewed(
        self, access_token: str, expires_at: datetime, refresh_token: str | None
    ) -> "TokenGrant":
        """Returns the grant after a refresh (providers that rotate refresh tokens send one)."""
        return replace(
            self,
            access_token=access_token,
            expires_at=expires_at,
            refresh_token=refresh_token or self.refresh_token,
        )


def missing_scopes(granted: frozenset[str], needed: tuple[str, ...]) -> list[str]:
    """Returns the needed scopes the user did not grant (consent screens let them uncheck)."""
    return [scope for scope in needed if scope not in granted]


class GrantStatus(StrEnum):
    """Where a mailbox's grant stands."""

    VERIFIED = "verified"  # sent in MailboxVerified; waiting for the registry's answer
    ACTIVE = "active"  # the mailbox is linked: kept fresh
    RECONNECT_REQUIRED = "reconnect_required"  # the provider refused a refresh for good


@dataclass(frozen=True)
class StoredGrant:
    """Whose link a grant belongs to, and where it stands; the tokens stay sealed."""

    link_id: str
    owner: MailboxOwner
    address: str
    provider: ProviderType
    status: GrantStatus
    expires_at: datetime
    sealed: EncryptedSecret  # TokenGrant JSON, bound to the address
    verified_at: datetime
    mailbox_id: str | None = None
