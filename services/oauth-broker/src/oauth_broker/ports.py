"""What the broker's handlers work with: the provider client and mailbox check they call
(Protocols, implemented in adapters/ and faked in tests) and the dependencies bootstrap wires."""

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from mailbox_link_contract.events import (
    ServerSettings,
    utc_now,
)
from mailbox_link_shared.crypto import SecretBox
from mailbox_link_shared.oidc_providers import SaslMechanism
from mailbox_link_shared.publishing import EventPublisher
from oauth_broker.adapters.broker_store import BrokerStore
from oauth_broker.adapters.oauth_client import OAuthApp, SignedInMailbox, TokenResponse
from oauth_broker.domain.grants import RefreshBackoff
from oauth_broker.domain.providers import ProviderKey
from oauth_broker.domain.sessions import (
    SessionSecrets,
)

logger = logging.getLogger(__name__)


class OAuthProviderClient(Protocol):
    """One provider's OAuth client (adapters/oauth_client.py; faked in unit tests)."""

    app: OAuthApp

    def authorize_url(self, secrets: SessionSecrets, login_hint: str) -> str: ...
    async def exchange_code(
        self, code: str, code_verifier: str, now: datetime
    ) -> TokenResponse: ...
    async def refresh(
        self, refresh_token: str, now: datetime, scopes: tuple[str, ...] = ()
    ) -> TokenResponse: ...
    async def revoke(self, token: str, hint: str = "refresh_token") -> bool: ...
    async def check_id_token(self, id_token: str, nonce: str) -> dict[str, Any]: ...
    async def signed_in_mailbox(self, tokens: TokenResponse, now: datetime) -> SignedInMailbox: ...
    async def aclose(self) -> None: ...


class CheckMailbox(Protocol):
    """Logs in to both mail servers with an access token (adapters/mailbox_check.py)."""

    def __call__(
        self,
        imap: ServerSettings,
        smtp: ServerSettings,
        access_token: str,
        mechanism: SaslMechanism = SaslMechanism.XOAUTH2,
    ) -> Awaitable[None]: ...


@dataclass(frozen=True)
class MailServers:
    """Where to check a provider's mailboxes, instead of the request's servers, and the SASL
    mechanism they take the token with."""

    imap: ServerSettings
    smtp: ServerSettings
    mechanism: SaslMechanism = SaslMechanism.XOAUTH2


@dataclass(frozen=True)
class BrokerDeps:
    """What the handlers work with; wired in bootstrap, faked in unit tests."""

    store: BrokerStore
    publisher: EventPublisher
    secret_box: SecretBox
    # By provider key: "google", ..., "oidc:<name>" (domain/providers.py).
    clients: Mapping[ProviderKey, OAuthProviderClient]
    check_mailbox: CheckMailbox
    session_lifetime: timedelta = timedelta(minutes=10)
    refresh_margin: timedelta = timedelta(minutes=5)
    # How long a refresh that failed by no fault of the user waits before it is tried again.
    refresh_backoff: RefreshBackoff = field(default_factory=RefreshBackoff)
    mail_servers: Mapping[ProviderKey, MailServers] | None = None
    clock: Callable[[], datetime] = utc_now
    # Where browsers open a sign-in: AuthorizationRequired carries <start_url>/<start token>.
    start_url: str = "http://127.0.0.1:8083/v1/oauth/start"
    # How long the product has to confirm a verified sign-in (at most until the reservation).
    confirm_lifetime: timedelta = timedelta(minutes=10)
    # Configured providers that could not be loaded, and why (for operators; their links fail
    # deployment_misconfigured).
    unavailable: Mapping[ProviderKey, str] = field(default_factory=dict)
    # Health checks (health_checks.py): how long a check waits for another refresher (the
    # holder of the grant's refresh lease) to finish before it answers timeout.
    check_refresh_wait: float = 10.0
