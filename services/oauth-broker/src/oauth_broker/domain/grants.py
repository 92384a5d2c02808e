"""The tokens a provider granted for a mailbox, and when they must be refreshed."""

import json
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from mailbox_link_contract.events import MailboxOwner, ProviderType
from mailbox_link_contract.values import EncryptedSecret
from oauth_broker.domain.providers import ProviderKey, provider_key


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
    # Refreshes that failed in a row by no fault of the user (our app refused, the provider
    # down or unreachable), when the next one may be tried, and the last error (an OAuth
    # error code or what failed, never a token): reset by a successful refresh.
    refresh_failures: int = 0
    retry_at: datetime | None = None
    last_refresh_error: str | None = None
    oidc_provider: str | None = None  # the configured OpenID Connect provider's name
    # The provider's stable id of the account that signed in (the id token's `sub`, else
    # userinfo's): a reconnect must come from the same account.
    subject: str | None = None

    @property
    def provider_key(self) -> ProviderKey:
        """Which provider client refreshes and revokes this grant."""
        return provider_key(self.provider, self.oidc_provider)


# A refresh that failed by no fault of the user is tried again after FIRST_REFRESH_RETRY, the
# wait doubling with each failure in a row up to MAX_REFRESH_RETRY: a provider outage or a
# rotated client secret is not hammered, and is noticed within minutes once mended.
FIRST_REFRESH_RETRY = timedelta(seconds=30)
MAX_REFRESH_RETRY = timedelta(minutes=15)
_MAX_DOUBLINGS = 30  # beyond any cap; keeps 2**n finite


@dataclass(frozen=True)
class RefreshBackoff:
    """How long to wait before refreshing again after failures that were not the user's."""

    first: timedelta = FIRST_REFRESH_RETRY
    cap: timedelta = MAX_REFRESH_RETRY

    def delay(self, failures: int) -> timedelta:
        """The wait after the `failures`-th failure in a row (1 for the first)."""
        doublings = min(max(failures - 1, 0), _MAX_DOUBLINGS)
        wait: timedelta = self.first * (1 << doublings)
        return min(self.cap, wait)
