"""An authorization session: one link's trip through a provider's sign-in, from URL to callback.

A session is opened when the link is requested, offered (its URL published) only once the
registry has reserved the link, and completed at most once: its state is random, single-use
and short-lived, and PKCE and the OIDC nonce bind the answer to this session.
"""

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum

from mailbox_link_contract.events import LinkRequested, MailboxOwner, ProviderType, ServerSettings
from oauth_broker.domain.providers import ProviderKey, provider_key


class SessionStatus(StrEnum):
    """Where a session stands."""

    OPEN = "open"  # waiting for the user to come back from the provider
    USED = "used"  # its callback arrived: the state never works again
    ENDED = "ended"  # the registry ended the link, or the session expired unused


@dataclass(frozen=True)
class SessionSecrets:
    """What only this session knows; sealed at rest. The start token (in the URL the product
    shows) is looked up by its digest; the state is made when the browser starts the sign-in,
    and stored only hashed (ADR 0014)."""

    state: str
    code_verifier: str
    nonce: str
    start_token: str = ""

    def __repr__(self) -> str:
        return "SessionSecrets(<redacted>)"

    def to_json(self) -> str:
        """Returns the JSON object that gets sealed."""
        return json.dumps(
            {
                "state": self.state,
                "code_verifier": self.code_verifier,
                "nonce": self.nonce,
                "start_token": self.start_token,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> "SessionSecrets":
        """Reads an opened JSON object back."""
        raw = json.loads(text)
        return cls(
            str(raw["state"]),
            str(raw["code_verifier"]),
            str(raw["nonce"]),
            str(raw.get("start_token", "")),
        )

    @classmethod
    def generate(cls) -> "SessionSecrets":
        """Returns fresh random values (PKCE's verifier is 43-128 characters: 64 here)."""
        return cls(
            state="",  # made when the browser starts the sign-in
            code_verifier=secrets.token_urlsafe(48),
            nonce=secrets.token_urlsafe(24),
            start_token=secrets.token_urlsafe(32),
        )

    def started(self, state: str) -> "SessionSecrets":
        """Returns these secrets with the state the provider will bring back."""
        return replace(self, state=state)


def new_secret() -> str:
    """Returns a fresh random value (256 bits): a state, browser binding or one-time code."""
    return secrets.token_urlsafe(32)


def state_digest(state: str) -> str:
    """Returns how a state is looked up: hashed, so a database reader cannot complete a sign-in.
    The start token, browser binding and confirmation code are stored the same way."""
    return hashlib.sha256(state.encode("utf-8")).hexdigest()


def binding_cookie_name(link_id: str) -> str:
    """Returns the name of the cookie that binds a link's sign-in to its browser: one per link,
    so two sign-ins in one browser do not overwrite each other."""
    return "mbl_signin_" + hashlib.sha256(link_id.encode("utf-8")).hexdigest()[:16]


def same_secret(presented: str | None, digest: str) -> bool:
    """True when a presented secret has the stored digest (compared in constant time)."""
    if not presented or not digest:
        return False
    return hmac.compare_digest(state_digest(presented), digest)


@dataclass(frozen=True)
class LinkToAuthorize:
    """The link request a session serves."""

    link_id: str
    owner: MailboxOwner
    address: str
    provider: ProviderType
    imap: ServerSettings
    smtp: ServerSettings
    oidc_provider: str | None = None  # the configured OpenID Connect provider's name

    @classmethod
    def of(cls, event: LinkRequested) -> "LinkToAuthorize":
        """Returns the part of a link request the sign-in needs."""
        data = event.data
        return cls(
            data.link_id, data.owner, data.address, data.provider, data.imap, data.smtp,
            data.oidc_provider if data.provider is ProviderType.OIDC else None,
        )  # fmt: skip

    @property
    def provider_key(self) -> ProviderKey:
        """Which provider client signs this link in."""
        return provider_key(self.provider, self.oidc_provider)


@dataclass(frozen=True)
class AuthorizationSession:
    """One link's sign-in, as stored."""

    link: LinkToAuthorize
    # The digest of the start token (the field keeps its stored name).
    state_digest: str
    status: SessionStatus
    created_at: datetime
    expires_at: datetime
    # Until when the registry holds the address and a plan slot for the link (LinkReserved).
    reserved_until: datetime | None = None
    # The link request's W3C trace context (traceparent, tracestate): the callback and the
    # confirmation, which come in HTTP requests of their own, continue the link's trace.
    trace_context: tuple[tuple[str, str], ...] = ()

    @classmethod
    def open(
        cls,
        link: LinkToAuthorize,
        now: datetime,
        lifetime: timedelta,
        trace_context: tuple[tuple[str, str], ...] = (),
    ) -> tuple["AuthorizationSession", SessionSecrets]:
        """Returns a new session for a link request, and its secrets."""
        fresh = SessionSecrets.generate()
        session = cls(
            link, state_digest(fresh.start_token), SessionStatus.OPEN, now, now + lifetime,
            trace_context=trace_context,
        )  # fmt: skip
        return session, fresh

    @property
    def reserved(self) -> bool:
        """True once the registry has reserved the link."""
        return self.reserved_until is not None

    def may_be_offered(self, now: datetime) -> bool:
        """True when its URL may be shown: reserved by the registry, open, and not expired."""
        return self.reserved and self.status is SessionStatus.OPEN and now < self.usable_until

    @property
    def usable_until(self) -> datetime:
        """When the sign-in stops being able to complete the link: the session's own expiry,
        or the reservation's, whichever comes first."""
        if self.reserved_until is None:
            return self.expires_at
        return min(self.expires_at, self.reserved_until)


class CallbackRefusal(StrEnum):
    """Why a callback changes nothing (answered 400)."""

    UNKNOWN_STATE = "unknown_state"  # forged, mistyped, or from another deployment
    STATE_USED = "state_used"  # a replay: the callback already came
    LINK_ENDED = "link_ended"  # the registry rejected or ended the link
    NOT_RESERVED = "not_reserved"  # the registry has not reserved the link
    SESSION_EXPIRED = "session_expired"
    START_USED = "start_used"  # the start URL was already opened (in this or another browser)
    NOT_BOUND = "not_bound"  # the callback came to a browser that did not start the sign-in
    MALFORMED = "malformed"  # a parameter longer than any we issue or a provider sends
    # RFC 9207: the callback names another issuer than the link's provider, or none where the
    # provider promises one: a mix-up attack, or a forged callback.
    ISSUER_MISMATCH = "issuer_mismatch"


def refuse_callback(session: AuthorizationSession | None, now: datetime) -> CallbackRefusal | None:
    """Returns why a callback for this session must be refused, or None to go on."""
    if session is None:
        return CallbackRefusal.UNKNOWN_STATE
    if session.status is SessionStatus.USED:
        return CallbackRefusal.STATE_USED
    # Expiry first: an expired session was also ended, and "expired" is what the user needs.
    if session.expires_at <= now:
        return CallbackRefusal.SESSION_EXPIRED
    if session.status is SessionStatus.ENDED:
        return CallbackRefusal.LINK_ENDED
    if session.reserved_until is None:
        return CallbackRefusal.NOT_RESERVED
    if session.reserved_until <= now:
        # The registry has ended the link, or will as soon as it notices: do not race it.
        return CallbackRefusal.LINK_ENDED
    return None


def refuse_issuer(
    iss: str | None, issuer: str | None, iss_parameter_supported: bool
) -> CallbackRefusal | None:
    """Returns why a callback's RFC 9207 `iss` must be refused, or None to go on. Checked when
    the provider advertises the parameter (then it must be there) and whenever it is present;
    not where the issuer cannot be known (Microsoft's multi-tenant endpoint)."""
    if issuer is None or (iss is None and not iss_parameter_supported):
        return None
    # Exactly the issuer, compared as strings (RFC 9207 2.4: no normalization).
    if iss is not None and iss == issuer:
        return None
    return CallbackRefusal.ISSUER_MISMATCH


@dataclass(frozen=True)
class SignInStart:
    """A started sign-in, inserted once when the browser opened the start URL: the digests of
    the state the provider brings back and of the secret in that browser's cookie."""

    link_id: str
    state_digest: str
    binding_digest: str
    started_at: datetime


@dataclass(frozen=True)
class PendingConfirmation:
    """A verified sign-in waiting for the product to confirm it for the requesting user: the
    one-time code only as a digest, and the servers the mailbox was checked on."""

    link_id: str
    code_digest: str
    expires_at: datetime
    imap: ServerSettings
    smtp: ServerSettings
