"""Hand-written in-memory stand-ins for the broker's storage, provider and mail servers."""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

from pydantic import SecretStr

from mailbox_link_contract.events import (
    AuthMethod,
    AuthorizationRequired,
    Failure,
    LinkRejected,
    LinkRejectedData,
    LinkRequested,
    LinkRequestedData,
    LinkReserved,
    LinkReservedData,
    MailboxOwner,
    ProviderType,
    ServerSettings,
)
from mailbox_link_contract.failures import FailureCode
from mailbox_link_contract.values import EncryptedSecret
from mailbox_link_shared.crypto import SecretBox, generate_key
from mailbox_link_shared.mail_probes import ProbeFailed
from mailbox_link_shared.oidc_providers import SaslMechanism
from mailbox_link_shared.publishing import RecordingPublisher
from oauth_broker import handlers
from oauth_broker.adapters.oauth_client import OAuthApp, SignedInMailbox, TokenResponse
from oauth_broker.domain.grants import GrantStatus, StoredGrant
from oauth_broker.domain.outcomes import AuthorizationFailed, ProviderRefused
from oauth_broker.domain.sessions import (
    AuthorizationSession,
    PendingConfirmation,
    SessionSecrets,
    SessionStatus,
    SignInStart,
    binding_cookie_name,
)
from oauth_broker.handlers import BrokerDeps
from oauth_broker.ports import OAuthProviderClient


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self) -> None:
        self.now = datetime(2026, 11, 26, 9, 30, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, by: timedelta) -> None:
        self.now += by


@dataclass
class _Session:
    session: AuthorizationSession | None = None
    sealed: EncryptedSecret | None = None
    reserved_until: datetime | None = None
    status: SessionStatus = SessionStatus.OPEN


class InMemoryBrokerStore:
    """The MongoDB store's semantics, in dictionaries."""

    def __init__(self) -> None:
        self.sessions: dict[str, _Session] = {}
        self.grants: dict[str, StoredGrant] = {}
        self.leases: dict[str, datetime] = {}
        self.starts: dict[str, SignInStart] = {}
        self.confirmations: dict[str, PendingConfirmation] = {}
        self.confirmed: set[str] = set()
        self.reconnects: dict[str, str] = {}

    async def save_request(self, session: AuthorizationSession, sealed: EncryptedSecret) -> None:
        entry = self.sessions.setdefault(session.link.link_id, _Session())
        if entry.session is None:
            entry.session, entry.sealed = session, sealed

    async def mark_reserved(self, link_id: str, until: datetime, now: datetime) -> None:
        self.sessions.setdefault(link_id, _Session()).reserved_until = until

    async def get_session(
        self, link_id: str
    ) -> tuple[AuthorizationSession, EncryptedSecret] | None:
        entry = self.sessions.get(link_id)
        if entry is None or entry.session is None or entry.sealed is None:
            return None
        return replace(
            entry.session, reserved_until=entry.reserved_until, status=entry.status
        ), entry.sealed

    async def session_by_start(
        self, digest: str
    ) -> tuple[AuthorizationSession, EncryptedSecret] | None:
        for link_id, entry in self.sessions.items():
            if entry.session is not None and entry.session.state_digest == digest:
                return await self.get_session(link_id)
        return None

    async def start_sign_in(self, start: SignInStart) -> bool:
        if start.link_id in self.starts:
            return False
        self.starts[start.link_id] = start
        return True

    async def start_by_state(self, digest: str) -> SignInStart | None:
        return next((s for s in self.starts.values() if s.state_digest == digest), None)

    async def save_confirmation(self, pending: PendingConfirmation) -> None:
        self.confirmations.setdefault(pending.link_id, pending)

    async def confirmation_by_code(self, digest: str) -> PendingConfirmation | None:
        return next((c for c in self.confirmations.values() if c.code_digest == digest), None)

    async def mark_confirmed(self, link_id: str, now: datetime) -> bool:
        if link_id in self.confirmed:
            return False
        self.confirmed.add(link_id)
        return True

    async def unmark_confirmed(self, link_id: str) -> None:
        self.confirmed.discard(link_id)

    async def claim_session(self, link_id: str, now: datetime) -> bool:
        entry = self.sessions.get(link_id)
        if entry is None or entry.session is None or entry.status is not SessionStatus.OPEN:
            return False
        if entry.session.expires_at <= now:
            return False
        entry.status = SessionStatus.USED
        return True

    async def end_session(self, link_id: str) -> bool:
        entry = self.sessions.get(link_id)
        if entry is None or entry.status is not SessionStatus.OPEN:
            return False
        entry.status = SessionStatus.ENDED
        return True

    async def expired_sessions(self, now: datetime) -> list[str]:
        return [
            link_id
            for link_id, entry in self.sessions.items()
            if entry.session is not None
            and entry.status is SessionStatus.OPEN
            and entry.session.expires_at <= now
        ]

    async def delete_stray_markers(self, before: datetime) -> int:
        return 0

    async def save_grant(self, grant: StoredGrant) -> None:
        self.grants[grant.link_id] = grant

    async def get_grant(self, link_id: str) -> StoredGrant | None:
        return self.grants.get(link_id)

    async def activate_grant(self, link_id: str, mailbox_id: str) -> bool:
        grant = self.grants.get(link_id)
        if grant is None or grant.status is not GrantStatus.VERIFIED:
            return False
        self.grants[link_id] = replace(grant, status=GrantStatus.ACTIVE, mailbox_id=mailbox_id)
        return True

    async def holds_grant_for(self, provider: ProviderType, addresses: tuple[str, ...]) -> bool:
        spellings = {*addresses, *(address.lower() for address in addresses)}
        return any(g.provider is provider and g.address in spellings for g in self.grants.values())

    async def grants_due(self, before: datetime, now: datetime) -> list[StoredGrant]:
        return [
            g
            for g in self.grants.values()
            if g.status is GrantStatus.ACTIVE
            and g.expires_at < before
            and (g.retry_at is None or g.retry_at <= now)
        ]

    async def lease_refresh(self, link_id: str, now: datetime, until: datetime) -> bool:
        grant = self.grants.get(link_id)
        if grant is None or grant.status is not GrantStatus.ACTIVE:
            return False
        held = self.leases.get(link_id)
        if held is not None and held > now:
            return False
        self.leases[link_id] = until
        return True

    async def renew_grant(
        self,
        link_id: str,
        sealed: EncryptedSecret,
        expires_at: datetime,
        replacing: EncryptedSecret,
    ) -> bool:
        grant = self.grants.get(link_id)
        if grant is None or grant.status is not GrantStatus.ACTIVE or grant.sealed != replacing:
            return False
        self.grants[link_id] = replace(
            grant,
            sealed=sealed,
            expires_at=expires_at,
            refresh_failures=0,
            retry_at=None,
            last_refresh_error=None,
        )
        self.leases.pop(link_id, None)
        return True

    async def postpone_refresh(
        self, link_id: str, failures: int, retry_at: datetime, error: str
    ) -> bool:
        grant = self.grants.get(link_id)
        if grant is None or grant.status is not GrantStatus.ACTIVE:
            return False
        self.grants[link_id] = replace(
            grant, refresh_failures=failures, retry_at=retry_at, last_refresh_error=error
        )
        self.leases.pop(link_id, None)
        return True

    async def mark_reconnect_required(self, link_id: str) -> bool:
        grant = self.grants.get(link_id)
        if grant is None or grant.status is not GrantStatus.ACTIVE:
            return False
        self.grants[link_id] = replace(grant, status=GrantStatus.RECONNECT_REQUIRED)
        return True

    async def delete_grant(self, link_id: str) -> bool:
        return self.grants.pop(link_id, None) is not None

    async def delete_unanswered_grants(self, verified_before: datetime) -> int:
        unanswered = [
            link_id
            for link_id, grant in self.grants.items()
            if grant.status is GrantStatus.VERIFIED and grant.verified_at < verified_before
        ]
        for link_id in unanswered:
            del self.grants[link_id]
        return len(unanswered)

    async def note_reconnect(self, link_id: str, mailbox_id: str, now: datetime) -> None:
        self.reconnects.setdefault(link_id, mailbox_id)

    async def reconnect_of(self, link_id: str) -> str | None:
        return self.reconnects.get(link_id)

    async def forget_reconnect(self, link_id: str) -> None:
        self.reconnects.pop(link_id, None)

    async def grant_of_mailbox(self, mailbox_id: str) -> StoredGrant | None:
        return next((g for g in self.grants.values() if g.mailbox_id == mailbox_id), None)

    async def adopt_grant(self, link_id: str, grant: StoredGrant) -> bool:
        old = self.grants.get(link_id)
        if old is None:
            return False
        self.grants[link_id] = replace(
            old,
            sealed=grant.sealed,
            expires_at=grant.expires_at,
            verified_at=grant.verified_at,
            status=GrantStatus.ACTIVE,
        )
        self.leases.pop(link_id, None)
        return True


@dataclass
class FakeProvider:
    """A provider that grants what it is told to; records what the broker asked."""

    app: OAuthApp
    signed_in_as: tuple[str, ...] = ()
    scopes: frozenset[str] = frozenset()
    refresh_token: str | None = "refresh-1"
    lifetime: timedelta = timedelta(hours=1)
    exchange_error: Exception | None = None
    profile_error: Exception | None = None
    refresh_error: Exception | None = None
    # The id token's and userinfo's `sub`; id_token=False: the code exchange returns none.
    id_subject: str | None = "subject-1"
    userinfo_subject: str | None = "subject-1"
    id_token: bool = True
    nonce_seen: list[str] = field(default_factory=list)
    revoked: list[str] = field(default_factory=list)
    revoke_error: Exception | None = None
    refreshed: int = 0
    refreshed_with: list[str] = field(default_factory=list)
    # Runs inside every refresh call, as if the provider were slow: a test's concurrent step.
    while_refreshing: Callable[[], Awaitable[None]] | None = None

    @property
    def subject(self) -> str | None:
        """The account's id, as both the id token and userinfo give it."""
        return self.userinfo_subject

    @subject.setter
    def subject(self, value: str | None) -> None:
        self.id_subject = self.userinfo_subject = value

    def authorize_url(self, secrets: SessionSecrets, login_hint: str) -> str:
        return f"https://provider.test/authorize?state={secrets.state}&login_hint={login_hint}"

    async def exchange_code(self, code: str, code_verifier: str, now: datetime) -> TokenResponse:
        if self.exchange_error is not None:
            raise self.exchange_error
        scopes = self.scopes or frozenset(self.app.endpoints.scopes)
        id_token = "idt" if self.id_token else None
        return TokenResponse("access-1", self.refresh_token, now + self.lifetime, scopes, id_token)

    async def refresh(
        self, refresh_token: str, now: datetime, scopes: tuple[str, ...] = ()
    ) -> TokenResponse:
        if self.while_refreshing is not None:
            await self.while_refreshing()
        if self.refresh_error is not None:
            raise self.refresh_error
        self.refreshed += 1
        self.refreshed_with.append(refresh_token)
        token = f"access-{self.refreshed + 1}"
        return TokenResponse(token, None, now + self.lifetime, frozenset(), None)

    async def revoke(self, token: str, hint: str = "refresh_token") -> bool:
        if self.revoke_error is not None:
            raise self.revoke_error
        self.revoked.append(token)
        return True

    async def check_id_token(self, id_token: str, nonce: str) -> dict[str, Any]:
        self.nonce_seen.append(nonce)
        claims = {"nonce": nonce}
        return claims if self.id_subject is None else {**claims, "sub": self.id_subject}

    async def signed_in_mailbox(self, tokens: TokenResponse, now: datetime) -> SignedInMailbox:
        if self.profile_error is not None:
            raise self.profile_error
        return SignedInMailbox(self.signed_in_as, subject=self.userinfo_subject)

    async def aclose(self) -> None:
        return None


def gmail_disabled() -> AuthorizationFailed:
    return AuthorizationFailed(FailureCode.GMAIL_DISABLED, "Mail service not enabled")


def invalid_grant() -> ProviderRefused:
    return ProviderRefused("invalid_grant", "Token has been expired or revoked.")


class FakeMailServers:
    """XOAUTH2 logins that succeed, or fail as told; records the servers and tokens used."""

    def __init__(self) -> None:
        self.refuse: FailureCode | None = None
        self.logins: list[tuple[str, str, str]] = []
        self.mechanisms: list[SaslMechanism] = []

    async def __call__(
        self,
        imap: ServerSettings,
        smtp: ServerSettings,
        access_token: str,
        mechanism: SaslMechanism = SaslMechanism.XOAUTH2,
    ) -> None:
        self.logins.append((imap.host, imap.username, access_token))
        self.mechanisms.append(mechanism)
        if self.refuse is not None:
            raise ProbeFailed(self.refuse, "login rejected: [AUTHENTICATIONFAILED]")


ADDRESS = "alice@gmail.com"
ALICE = MailboxOwner(account_id="acme", user_id="u1")
BOX = SecretBox({"k": SecretStr(generate_key())}, "k")


def requested(link_id: str) -> LinkRequested:
    """An OAuth link request for alice@gmail.com."""
    imap = ServerSettings(host="imap.gmail.com", port=993, security="ssl", username=ADDRESS)
    smtp = ServerSettings(host="smtp.gmail.com", port=465, security="ssl", username=ADDRESS)
    data = LinkRequestedData(
        link_id=link_id, owner=ALICE, address=ADDRESS, provider=ProviderType.GOOGLE,
        auth=AuthMethod.OAUTH, imap=imap, smtp=smtp,
    )  # fmt: skip
    return LinkRequested(correlation_id=link_id, producer="link-api", data=data)


def reserved(
    link_id: str, provider: ProviderType = ProviderType.GOOGLE, mailbox_id: str | None = None
) -> LinkReserved:
    """The registry's reservation of that request, for an hour (to reconnect `mailbox_id`)."""
    expires_at = FakeClock()() + timedelta(hours=1)
    data = LinkReservedData(
        link_id=link_id, owner=ALICE, address=ADDRESS, expires_at=expires_at, provider=provider,
        mailbox_id=mailbox_id,
    )  # fmt: skip
    return LinkReserved(correlation_id=link_id, producer="registry", data=data)


def rejected(link_id: str) -> LinkRejected:
    """The registry ending that request (its reservation expired)."""
    failure = Failure.of(FailureCode.RESERVATION_EXPIRED)
    data = LinkRejectedData(link_id=link_id, owner=ALICE, address=ADDRESS, failure=failure)
    return LinkRejected(correlation_id=link_id, producer="registry", data=data)


# The requester's browser: the binding cookies of the sign-ins started in it.
JAR: dict[str, str] = {}


def start_token(offer: AuthorizationRequired) -> str:
    """Returns the start token at the end of an offer's URL."""
    return urlsplit(offer.data.authorize_url).path.rsplit("/", 1)[-1]


async def start_in_browser(
    deps: BrokerDeps, offer: AuthorizationRequired, jar: dict[str, str] | None = None
) -> str:
    """Opens an offer's start URL in a browser (JAR unless told); returns the state the
    provider will bring back to it."""
    started = await handlers.start_sign_in(start_token(offer), deps)
    assert started.redirect_url is not None, started.refusal
    assert started.link_id is not None
    assert started.binding is not None
    (JAR if jar is None else jar)[binding_cookie_name(started.link_id)] = started.binding
    return parse_qs(urlsplit(started.redirect_url).query)["state"][0]


async def offer_sign_in(deps: BrokerDeps, link_id: str = "l1") -> str:
    """Opens, offers and starts a sign-in in JAR's browser; returns its state, as the browser
    would bring it back."""
    await handlers.when_link_requested_open_session(requested(link_id), deps)
    await handlers.when_link_reserved_offer_sign_in(reserved(link_id), deps)
    assert isinstance(deps.publisher, RecordingPublisher)
    offer = deps.publisher.events[-1]
    assert isinstance(offer, AuthorizationRequired)
    return await start_in_browser(deps, offer)


def fake_deps(provider: OAuthProviderClient | None = None, **changes: Any) -> BrokerDeps:
    """BrokerDeps on in-memory fakes: a fresh store and publisher, the test key, `provider` as
    Google's client, mail servers that accept every login, a set clock; `changes` replaces any
    of these or sets any other field."""
    settings: dict[str, Any] = {
        "store": InMemoryBrokerStore(),
        "publisher": RecordingPublisher(),
        "secret_box": BOX,
        "clients": {ProviderType.GOOGLE: provider} if provider is not None else {},
        "check_mailbox": FakeMailServers(),
        "clock": FakeClock(),
    }
    return BrokerDeps(**{**settings, **changes})
