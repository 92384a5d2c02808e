"""One function per thing link-api does: request a link, and record what happened to it."""

import hashlib
import logging
import uuid
from dataclasses import dataclass
from datetime import timedelta

from link_api.adapters.link_store import IdempotencyRecord, LinkStore
from link_api.config import SERVICE_NAME
from link_api.domain.authority import DomainFacts, authority_for, facts_from, facts_from_tables
from link_api.domain.link_request import CannotLink, LinkPlan, LinkRequest, auth_for
from link_api.domain.link_status import TERMINAL, LinkProgress, LinkStatus, LinkView
from link_api.domain.providers import (
    PROVIDERS,
    AuthMethod,
    Detection,
    MailSettings,
    Provider,
    Server,
)
from link_api.ports import DetectsProviders
from mailbox_link_contract.events import (
    Authority,
    AuthorizationRequired,
    LinkRejected,
    LinkRequested,
    LinkRequestedData,
    LinkReserved,
    MailboxLinked,
    MailboxOwner,
    MailboxReconnectRequired,
    MailboxUnlinked,
    MailboxVerified,
    ServerSettings,
    VerificationFailed,
    utc_now,
)
from mailbox_link_contract.failures import FailureCode
from mailbox_link_shared.api_errors import ApiErrorCode
from mailbox_link_shared.crypto import SecretBox
from mailbox_link_shared.publishing import EventPublisher
from mailbox_link_shared.routing import EventHandlers, ignore

logger = logging.getLogger(__name__)


class IdempotencyKeyReused(Exception):
    """The same Idempotency-Key came with a different request."""


@dataclass(frozen=True)
class LinkApiDeps:
    """What the handlers work with; wired in bootstrap."""

    store: LinkStore
    publisher: EventPublisher
    secret_box: SecretBox
    in_flight_expiry: timedelta


@dataclass(frozen=True)
class RequestedLink:
    """The answer to a link request: the link, and whether this request created it."""

    link: LinkView
    created: bool


async def request_link(
    request: LinkRequest, idempotency_key: str | None, deps: LinkApiDeps
) -> RequestedLink:
    """Starts verifying a mailbox, unless the same request is already under way."""
    scope = _idempotency_scope(request.owner, idempotency_key) if idempotency_key else None
    if scope is not None:
        existing = await deps.store.find_idempotency_key(scope)
        if existing is not None:
            return await _replay(existing, request, deps)

    link_id = uuid.uuid4().hex
    now = utc_now()
    link = LinkView(
        link_id,
        request.owner,
        request.address,
        request.provider,
        LinkStatus.PENDING,
        now,
        now,
        auth=request.auth,
    )
    # Store first, then claim: whoever holds the claim has a link document a caller can read.
    await deps.store.insert_link(link)
    holder = await deps.store.claim_in_flight(
        request.in_flight_key(), link_id, now, now + deps.in_flight_expiry
    )
    if holder != link_id:
        await deps.store.delete_link(link_id)
        return await _answer_with(holder, request, scope, deps)

    try:
        await deps.publisher.publish(_link_requested(link_id, request, deps.secret_box))
    except Exception:
        await deps.store.release_in_flight(link_id)
        await deps.store.delete_link(link_id)
        raise
    logger.info(
        "link %s requested for %s (%s, %s)",
        link_id, request.address, request.provider, request.auth,
    )  # fmt: skip
    if scope is not None:
        await deps.store.remember_idempotency_key(
            scope, IdempotencyRecord(link_id, request.fingerprint())
        )
    return RequestedLink(link, created=True)


async def _answer_with(
    link_id: str, request: LinkRequest, scope: str | None, deps: LinkApiDeps
) -> RequestedLink:
    """Answers a duplicate with the link already under way."""
    if scope is not None:
        record = await deps.store.remember_idempotency_key(
            scope, IdempotencyRecord(link_id, request.fingerprint())
        )
        return await _replay(record, request, deps)
    link = await deps.store.get_link(link_id)
    if link is None:
        raise LookupError(f"in-flight link {link_id} has no document")
    return RequestedLink(link, created=False)


async def _replay(
    record: IdempotencyRecord, request: LinkRequest, deps: LinkApiDeps
) -> RequestedLink:
    if record.fingerprint != request.fingerprint():
        raise IdempotencyKeyReused
    link = await deps.store.get_link(record.link_id)
    if link is None:
        raise LookupError(f"idempotent link {record.link_id} has no document")
    return RequestedLink(link, created=False)


async def get_link(owner: MailboxOwner, link_id: str, deps: LinkApiDeps) -> LinkView | None:
    """Returns the link if it exists and belongs to this user."""
    link = await deps.store.get_link(link_id)
    if link is None or link.owner != owner:
        return None
    return link


async def when_mailbox_verified_update_status(event: MailboxVerified, deps: LinkApiDeps) -> None:
    """Shows that the mailbox's credentials work; the registry's answer still ends the link.

    A VerificationFailed needs nothing here: the registry answers it with LinkRejected.
    """
    progress = LinkProgress(LinkStatus.VERIFIED, utc_now(), event_id=event.event_id.hex)
    await _advance(event.data.link_id, progress, deps)


async def when_authorization_required_show_url(
    event: AuthorizationRequired, deps: LinkApiDeps
) -> None:
    """Shows where the user signs in to finish an OAuth link, and until when.

    Only a link still waiting (pending or reserved) shows it: once it is verified or has
    ended, a late or repeated event must not bring a sign-in URL back.
    """
    data = event.data
    progress = LinkProgress(
        LinkStatus.AUTHORIZATION_REQUIRED,
        utc_now(),
        authorize_url=data.authorize_url,
        authorization_expires_at=data.expires_at,
        event_id=event.event_id.hex,
    )
    await _advance(data.link_id, progress, deps)


async def when_registry_answer_update_status(
    event: LinkReserved | MailboxLinked | LinkRejected, deps: LinkApiDeps
) -> None:
    """Moves the link to reserved, linked, or failed with the reason, as the registry decided."""
    now, event_id = utc_now(), event.event_id.hex
    if isinstance(event, LinkReserved):
        progress = LinkProgress(LinkStatus.RESERVED, now, event_id=event_id)
    elif isinstance(event, MailboxLinked):
        progress = LinkProgress(
            LinkStatus.LINKED, now, mailbox_id=event.data.mailbox_id, event_id=event_id
        )
    elif event.data.failure.code is FailureCode.ALREADY_LINKED:
        # Not an error for the caller: the mailbox they asked for is linked to them.
        progress = LinkProgress(
            LinkStatus.LINKED,
            now,
            mailbox_id=event.data.mailbox_id,
            already_linked=True,
            event_id=event_id,
        )
    else:
        progress = LinkProgress(
            LinkStatus.FAILED, now, failure=event.data.failure, event_id=event_id
        )
    await _advance(event.data.link_id, progress, deps)


async def _advance(link_id: str, progress: LinkProgress, deps: LinkApiDeps) -> None:
    # A link that ends also ends its in-flight claim: the store tells a claim's end by it.
    moved = await deps.store.advance_link(link_id, progress)
    if moved is not None and progress.status in TERMINAL:
        logger.info("link %s is %s", link_id, progress.status.value)


async def plan_link(
    address: str,
    provider: Provider | None,
    asked: AuthMethod | None,
    has_password: bool,
    detector: DetectsProviders,
) -> LinkPlan:
    """Returns who hosts a mailbox given without servers, how it links, and its servers.

    An explicit provider wins over detection. Without a password, a provider with a sign-in
    (Google, Microsoft, Yahoo, AOL) links by OAuth; with one, by password, except at Microsoft.
    Whatever cannot be linked as asked is refused with the field to fix, and so is a provider
    asked for an address another known provider hosts.
    """
    provider, found, facts = await _provider_and_settings(address, provider, detector)
    info = PROVIDERS.get(provider)
    auth = auth_for(info, asked, has_password)
    # An OAuth link logs in to the provider's own servers, whatever detection found.
    settings = info.settings if info is not None and auth is AuthMethod.OAUTH else found
    if info is None or settings is None:
        raise CannotLink(
            ApiErrorCode.SETTINGS_REQUIRED, "We could not find this mailbox's servers.",
            "imap", "choose your provider (GET /v1/providers) or enter IMAP and SMTP settings",
        )  # fmt: skip
    if auth is AuthMethod.PASSWORD and not has_password:
        where = f" (create one at {info.app_password_url})" if info.app_password_url else ""
        raise CannotLink(
            ApiErrorCode.INVALID_REQUEST, "A password is needed to link this mailbox.",
            "password", f"give the mailbox's password or app password{where}",
        )  # fmt: skip
    imap, smtp = _with_login(settings.imap, address), _with_login(settings.smtp, address)
    # The only way to other servers than the detected provider's is an explicit provider.
    authority = authority_for(address, imap, smtp, auth, facts, ("provider", "provider"))
    return LinkPlan(provider, auth, settings, authority)


async def typed_servers_authority(request: LinkRequest, detector: DetectsProviders) -> Authority:
    """Returns why a password link's typed servers speak for its address, from what detection
    finds (cached per domain, every lookup bounded); refuses servers that are not the known
    provider's own, and passwords at a provider that takes none (Microsoft)."""
    facts = facts_from(await detector.detect(request.address))
    authority = authority_for(request.address, request.imap, request.smtp, request.auth, facts)
    info = PROVIDERS[facts.provider] if facts.provider is not None else None
    if info is not None and AuthMethod.PASSWORD not in info.auth_methods:
        raise CannotLink(
            ApiErrorCode.OAUTH_REQUIRED,
            f"{info.name} mailboxes link only by signing in; passwords are not accepted.",
            "imap.password",
            f"omit imap, smtp and the password to sign in with {info.name}",
        )
    return authority


def _with_login(server: Server, address: str) -> ServerSettings:
    return ServerSettings(
        host=server.host,
        port=server.port,
        security=server.security,
        username=server.username_for(address),
    )


async def settings_for(
    address: str, provider: Provider | None, detector: DetectsProviders
) -> tuple[Provider, MailSettings]:
    """Returns who hosts the mailbox and its servers, for a link with a password (what
    bench/detection.py times as detection's cost to a link request)."""
    plan = await plan_link(address, provider, AuthMethod.PASSWORD, True, detector)
    return plan.provider, plan.settings


async def _provider_and_settings(
    address: str, provider: Provider | None, detector: DetectsProviders
) -> tuple[Provider, MailSettings | None, DomainFacts]:
    """Returns who hosts the mailbox, its servers if known, and the facts its link's authority
    is decided on; asks detection only if needed (an explicit provider's domain is checked
    against the consumer-domain table only)."""
    settings = PROVIDERS[provider].settings if provider in PROVIDERS else None
    if provider is not None and settings is not None:
        return provider, settings, facts_from_tables(address.rpartition("@")[2])
    detection = await detector.detect(address)
    if detection.reason == "no_mail_server":
        raise CannotLink(
            ApiErrorCode.NO_MAIL_SERVER, "This domain has no mail server (no MX record).",
            "email", "check the address for typos",
        )  # fmt: skip
    provider = provider or detection.provider
    settings = detection.settings if detection.provider is provider else None
    return provider, settings, facts_from(detection)


async def detect_provider(address: str, detector: DetectsProviders) -> Detection:
    """Tells who hosts a normalized address (cached per domain for its DNS TTL)."""
    return await detector.detect(address)


def _link_requested(link_id: str, request: LinkRequest, box: SecretBox) -> LinkRequested:
    # Only password links carry credentials; an OAuth link's tokens come from the broker.
    credentials = request.credentials
    sealed = box.seal(credentials.to_json(), context=request.address) if credentials else None
    data = LinkRequestedData(
        link_id=link_id,
        owner=request.owner,
        address=request.address,
        provider=request.provider,
        auth=request.auth,
        imap=request.imap,
        smtp=request.smtp,
        credentials=sealed,
        authority=request.authority,
    )
    return LinkRequested(correlation_id=link_id, producer=SERVICE_NAME, data=data)


def _idempotency_scope(owner: MailboxOwner, key: str) -> str:
    # Keys are the caller's; scoping by user keeps two users' identical keys apart.
    raw = f"{owner.account_id}\x1f{owner.user_id}\x1f{key}"
    return hashlib.sha256(raw.encode()).hexdigest()


EVENT_HANDLERS: EventHandlers[LinkApiDeps] = {
    MailboxVerified: when_mailbox_verified_update_status,
    LinkReserved: when_registry_answer_update_status,
    MailboxLinked: when_registry_answer_update_status,
    LinkRejected: when_registry_answer_update_status,
    AuthorizationRequired: when_authorization_required_show_url,
    # The registry answers a failed verification with LinkRejected, which ends the link.
    VerificationFailed: ignore,
    # About mailboxes, not link requests: the registry keeps them.
    MailboxUnlinked: ignore,
    MailboxReconnectRequired: ignore,
}
