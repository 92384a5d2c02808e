"""One function per thing link-api does: request a link, and record what happened to it."""

import asyncio
import hashlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from link_api.adapters.link_store import IdempotencyRecord, LinkStore, Send, SendDecision
from link_api.config import DEFAULT_SEND_DEADLINE, SERVICE_NAME
from link_api.domain.authority import DomainFacts, authority_for, facts_from, facts_from_tables
from link_api.domain.link_request import (
    CannotLink,
    LinkPlan,
    LinkRequest,
    auth_for,
    in_flight_key,
)
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
    Failure,
    LinkRejected,
    LinkRequested,
    LinkRequestedData,
    LinkReserved,
    MailboxHealthChanged,
    MailboxLinked,
    MailboxOwner,
    MailboxReconnected,
    MailboxReconnectRequired,
    MailboxUnlinked,
    MailboxVerified,
    ServerSettings,
    VerificationFailed,
    utc_now,
)
from mailbox_link_contract.failures import FailureCode
from mailbox_link_shared import metrics
from mailbox_link_shared.api_errors import ApiErrorCode
from mailbox_link_shared.crypto import SecretBox
from mailbox_link_shared.publishing import EventPublisher
from mailbox_link_shared.routing import EventHandlers, ignore
from mailbox_link_shared.tracing import (
    LINK_ID,
    LINK_STATUS,
    continued_span,
    current_trace_headers,
    set_attributes,
)

logger = logging.getLogger(__name__)


class IdempotencyKeyReused(Exception):
    """The same Idempotency-Key came with a different request."""


FaultPoint = Callable[[str], Awaitable[None]]


async def _no_fault(point: str) -> None:
    """Production's fault point: nothing."""


async def _events_assumed_ready() -> bool:
    """Without a readiness check (tests), Kafka is taken to be there."""
    return True


# How long a request waits for Kafka to store its event before it stops waiting (docs/adr/0022).
DEFAULT_PUBLISH_DEADLINE_SECONDS = 5.0


@dataclass(frozen=True)
class LinkApiDeps:
    """What the handlers work with; wired in bootstrap."""

    store: LinkStore
    publisher: EventPublisher
    secret_box: SecretBox
    in_flight_expiry: timedelta
    # A request not decided for sending by then is never sent: its link fails request_not_sent.
    send_deadline: timedelta = DEFAULT_SEND_DEADLINE
    # Called at each crash window of a request (FAULT_POINTS); tests pause there.
    fault_point: FaultPoint = _no_fault
    # Whether Kafka answers now (cached, bounded): a POST is refused 503 before anything is
    # stored when it does not (docs/adr/0022).
    events_ready: Callable[[], Awaitable[bool]] = _events_assumed_ready
    # A publish that Kafka has not acknowledged by then is left to the relay.
    publish_deadline_seconds: float = DEFAULT_PUBLISH_DEADLINE_SECONDS


# Where a link request can stop half done: stored, not decided; decided, not published;
# published, not taken off the unsent list.
FAULT_POINTS = ("stored", "decided", "published")


@dataclass(frozen=True)
class RequestedLink:
    """The answer to a link request: the link, and whether this request created it."""

    link: LinkView
    created: bool


async def request_link(
    request: LinkRequest, idempotency_key: str | None, deps: LinkApiDeps
) -> RequestedLink:
    """Starts verifying a mailbox, unless the same request is already under way.

    The Idempotency-Key is bound to the new link's id first (a unique insert), so a retry with
    it always names this link; the link is then stored with its LinkRequested (one insert), and
    published once its send is decided. Whatever a crash leaves half done, a retry or the relay
    carries on (DESIGN.md, "Sending a request").
    """
    link_id = uuid.uuid4().hex
    if idempotency_key is not None:
        scope = _idempotency_scope(request.owner, idempotency_key)
        record = await deps.store.remember_idempotency_key(
            scope, IdempotencyRecord(link_id, request.fingerprint())
        )
        if record.fingerprint != request.fingerprint():
            raise IdempotencyKeyReused
        if record.link_id != link_id:
            return await _replay(record.link_id, request, deps)
    return await _start(link_id, request, deps, created=True)


async def _start(
    link_id: str, request: LinkRequest, deps: LinkApiDeps, created: bool
) -> RequestedLink:
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
    event = _link_requested(link_id, request, deps.secret_box)
    # Store first, then claim: whoever holds the claim has a link document a caller can read.
    ours = event.model_dump_json()
    # With the request's trace context: a relayed LinkRequested continues the request's trace.
    stored_event = await deps.store.insert_link(link, ours, current_trace_headers())
    if stored_event is not None and stored_event != ours:
        # A retry with our key stored it first: its event (and event_id) is the one sent.
        event = LinkRequested.model_validate_json(stored_event)
    holder = await _claim(link_id, request.in_flight_key(), now, deps)
    if holder != link_id:
        await _drop_duplicate(link_id, holder, deps)
        return await _answer_with(holder, deps)
    await deps.fault_point("stored")
    decision = await deps.store.decide_send(link_id, SendDecision(Send.PUBLISH))
    if decision.send is Send.PUBLISH:
        await deps.fault_point("decided")
        try:
            await _publish(link_id, event, deps)
        except Exception:
            # Stored and decided: the relay sends it once Kafka takes it again.
            logger.exception("link %s: LinkRequested not published yet; the relay will", link_id)
        else:
            logger.info(
                "link %s requested for %s (%s, %s)",
                link_id, request.address, request.provider, request.auth,
            )  # fmt: skip
    else:
        # Decided before us, by a relay or a retry that found this request too old to send.
        await _carry_out(link_id, decision, deps)
    stored = await deps.store.get_link(link_id) if decision.send is not Send.PUBLISH else None
    return RequestedLink(stored or link, created=created)


async def _claim(link_id: str, key: str, claimed_at: datetime, deps: LinkApiDeps) -> str:
    """Claims 'this user linking this mailbox' for the link; returns the holder. A holder is
    never a link that cannot finish: one whose request is undecided is decided here (sent if
    still young, else failed, which ends its claim), and one that failed or was dropped has
    its end carried out, so the claim can be taken from it."""
    expires_at = claimed_at + deps.in_flight_expiry
    for _ in range(_CLAIM_ATTEMPTS):
        holder = await deps.store.claim_in_flight(key, link_id, claimed_at, expires_at)
        if holder == link_id:
            return link_id
        decision = await deps.store.send_decision(holder)
        if decision is None:
            held = await deps.store.get_link(holder)
            if held is None:  # a holder stored its link before it claimed
                raise LookupError(f"in-flight link {holder} has no document")
            decision = await _decide(held, deps)
            if decision.send is Send.PUBLISH:
                await _carry_out(holder, decision, deps)
        if decision.send is Send.PUBLISH:
            return holder
        await _carry_out(holder, decision, deps)  # its end ends its claim
    raise RuntimeError(f"link {link_id}: the in-flight claim kept changing hands")


_CLAIM_ATTEMPTS = 5


async def _decide(link: LinkView, deps: LinkApiDeps) -> SendDecision:
    """Decides an undecided request: sent while younger than the send deadline, else failed."""
    young = utc_now() - link.created_at < deps.send_deadline
    wanted = SendDecision(Send.PUBLISH if young else Send.FAIL)
    return await deps.store.decide_send(link.link_id, wanted)


async def _carry_out(link_id: str, decision: SendDecision, deps: LinkApiDeps) -> None:
    """Does what the decision says, again if a crash cut it short: publish the stored request,
    record the failure, or drop the duplicate; then takes the link off the unsent list."""
    if decision.send is Send.PUBLISH:
        outbox = await deps.store.get_outbox(link_id)
        if outbox is not None:  # None: the link ended, so it was sent
            # In the trace of the request that stored it (a relay round or a retry has its own).
            carried = await deps.store.get_outbox_trace(link_id)
            with continued_span("link-api outbox send", carried, {LINK_ID: link_id}):
                await _publish(link_id, LinkRequested.model_validate_json(outbox), deps)
        else:
            await deps.store.mark_sent(link_id)
    elif decision.send is Send.FAIL:
        failure = Failure.of(FailureCode.REQUEST_NOT_SENT)
        # A fixed event id: a second carrying out is a redelivery of the same step.
        progress = LinkProgress(
            LinkStatus.FAILED, utc_now(), failure=failure, event_id=f"{link_id}.not-sent"
        )
        await _advance(link_id, progress, deps)
        await deps.store.mark_sent(link_id)
    else:
        await deps.store.release_in_flight(link_id)
        await deps.store.delete_link(link_id)


async def _publish(link_id: str, event: LinkRequested, deps: LinkApiDeps) -> None:
    # The stored event, with its event_id: a second publication is a duplicate consumers drop.
    # Bounded: with Kafka away the client would wait minutes. The send is decided `publish`
    # before this, so a publish that timed out (or went out late) is only ever resent.
    await asyncio.wait_for(deps.publisher.publish(event), deps.publish_deadline_seconds)
    await deps.fault_point("published")
    await deps.store.mark_sent(link_id)


async def _drop_duplicate(link_id: str, holder: str, deps: LinkApiDeps) -> SendDecision:
    """Our request is answered by the holder's link; ours is never sent. Decided by a unique
    insert, so a relay that finds our link listed cannot send it, and a retry with our key is
    led to the holder."""
    decision = await deps.store.decide_send(link_id, SendDecision(Send.DUPLICATE, holder))
    if decision.send is Send.DUPLICATE:
        await _carry_out(link_id, decision, deps)
    return decision


async def _answer_with(link_id: str, deps: LinkApiDeps) -> RequestedLink:
    """Answers a duplicate with the link already under way."""
    link = await deps.store.get_link(link_id)
    if link is None:
        raise LookupError(f"in-flight link {link_id} has no document")
    return RequestedLink(link, created=False)


async def _replay(link_id: str, request: LinkRequest, deps: LinkApiDeps) -> RequestedLink:
    """Answers a retry with its key's link, first carrying on whatever the first request left
    undone: its link stored, its request decided, a failure or a drop recorded."""
    link = await deps.store.get_link(link_id)
    if link is not None and link.status is not LinkStatus.PENDING:
        return RequestedLink(link, created=False)  # answered, so sent
    decision = await deps.store.send_decision(link_id)
    if decision is None:
        if link is None:  # the first request stopped between binding the key and storing
            return await _start(link_id, request, deps, created=False)
        decision = await resume(link_id, deps)
    elif decision.send is not Send.PUBLISH:  # a sent one is the relay's to send again
        await _carry_out(link_id, decision, deps)
    if decision is not None and decision.send is Send.DUPLICATE and decision.holder:
        return await _answer_with(decision.holder, deps)
    if link is not None and decision is not None and decision.send is Send.PUBLISH:
        return RequestedLink(link, created=False)  # still pending, as read
    return await _answer_with(link_id, deps)


async def resume(link_id: str, deps: LinkApiDeps) -> SendDecision | None:
    """Carries on a listed link whose request may not have gone out (the relay's and a retry's
    step): claims for it as its request would have, decides, and carries the decision out.
    Returns the decision; None if the link was never stored."""
    decision = await deps.store.send_decision(link_id)
    if decision is None:
        link = await deps.store.get_link(link_id)
        if link is None:
            return None  # listed, never stored: the relay drops the entry after the deadline
        if link.status is not LinkStatus.PENDING:
            await deps.store.mark_sent(link_id)  # answered, so sent
            return SendDecision(Send.PUBLISH)
        holder = await _claim(
            link_id, in_flight_key(link.owner, link.address), link.created_at, deps
        )
        if holder != link_id:
            return await _drop_duplicate(link_id, holder, deps)
        decision = await _decide(link, deps)
    await _carry_out(link_id, decision, deps)
    return decision


async def relay_unsent(deps: LinkApiDeps, grace: timedelta, batch: int) -> int:
    """Carries on every link listed as unsent for longer than `grace` (a request a crash or a
    Kafka outage cut short); returns how many it looked at. Safe on every replica at once."""
    now = utc_now()
    listed = await deps.store.unsent(now - grace, batch)
    for entry in listed:
        try:
            if await deps.store.get_link(entry.link_id) is None:
                if now - entry.since >= deps.send_deadline:
                    await deps.store.mark_sent(entry.link_id)  # its request died before storing it
                continue
            await resume(entry.link_id, deps)
        except Exception:
            logger.exception("link %s: relay round failed; next round retries", entry.link_id)
    return len(listed)


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
    event: LinkReserved | MailboxLinked | MailboxReconnected | LinkRejected, deps: LinkApiDeps
) -> None:
    """Moves the link to reserved, linked (or reconnected), or failed with the reason, as the
    registry decided."""
    now, event_id = utc_now(), event.event_id.hex
    if isinstance(event, LinkReserved):
        progress = LinkProgress(LinkStatus.RESERVED, now, event_id=event_id)
    elif isinstance(event, MailboxLinked):
        progress = LinkProgress(
            LinkStatus.LINKED, now, mailbox_id=event.data.mailbox_id, event_id=event_id
        )
    elif isinstance(event, MailboxReconnected):
        # The user's mailbox works again, under the id it had.
        progress = LinkProgress(
            LinkStatus.LINKED,
            now,
            mailbox_id=event.data.mailbox_id,
            reconnected=True,
            event_id=event_id,
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
    set_attributes(**{LINK_STATUS: progress.status.value})
    if moved is not None and progress.status in TERMINAL:
        # The failure code says why, for a person reading the log (issue 16).
        code = f" ({progress.failure.code})" if progress.failure is not None else ""
        logger.info("link %s is %s%s", link_id, progress.status.value, code)
        if progress.status is LinkStatus.LINKED:
            metrics.link_finished(None)
        elif progress.status is LinkStatus.FAILED:
            failure = progress.failure
            metrics.link_finished(failure.code if failure else FailureCode.INTERNAL_ERROR)


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
        oidc_provider=request.oidc_provider,
        reconnect=request.reconnect,
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
    MailboxReconnected: when_registry_answer_update_status,
    AuthorizationRequired: when_authorization_required_show_url,
    # The registry answers a failed verification with LinkRejected, which ends the link.
    VerificationFailed: ignore,
    # About mailboxes, not link requests: the registry keeps them.
    MailboxUnlinked: ignore,
    MailboxReconnectRequired: ignore,
    MailboxHealthChanged: ignore,
}
