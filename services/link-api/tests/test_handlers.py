from dataclasses import replace
from datetime import timedelta

import pytest
from pydantic import SecretStr

from link_api import handlers
from link_api.domain.link_request import LinkRequest
from link_api.domain.link_status import LinkStatus, LinkView
from link_api.handlers import IdempotencyKeyReused, LinkApiDeps
from link_api_fakes import InMemoryLinkStore
from mailbox_link_contract.events import (
    AuthMethod,
    AuthorizationRequired,
    AuthorizationRequiredData,
    Failure,
    LinkRejected,
    LinkRejectedData,
    LinkRequested,
    LinkReserved,
    LinkReservedData,
    MailboxLinked,
    MailboxLinkedData,
    MailboxOwner,
    MailboxReconnected,
    MailboxReconnectedData,
    MailboxVerified,
    MailboxVerifiedData,
    ProviderType,
    ServerSettings,
    utc_now,
)
from mailbox_link_contract.failures import FailureCode
from mailbox_link_shared.credentials import MailboxCredentials
from mailbox_link_shared.crypto import SecretBox, generate_key
from mailbox_link_shared.publishing import RecordingPublisher

OWNER = MailboxOwner(account_id="acme", user_id="u1")
PASSWORD = "correct-horse-battery"


SIGN_IN_URL = "https://accounts.google.com/o/oauth2/v2/auth?state=s1"


def _request(address: str = "alice@example.org", host: str = "imap.example.org") -> LinkRequest:
    server = ServerSettings(host=host, port=993, security="ssl", username=address)
    return LinkRequest(
        OWNER, address, ProviderType.IMAP, server, server, MailboxCredentials(PASSWORD, PASSWORD)
    )


def _oauth_request(address: str = "alice@example.org") -> LinkRequest:
    imap = ServerSettings(host="imap.gmail.com", port=993, security="ssl", username=address)
    smtp = ServerSettings(host="smtp.gmail.com", port=465, security="ssl", username=address)
    return LinkRequest(OWNER, address, ProviderType.GOOGLE, imap, smtp, None, AuthMethod.OAUTH)


@pytest.fixture
def deps() -> LinkApiDeps:
    box = SecretBox({"k1": SecretStr(generate_key())}, "k1")
    return LinkApiDeps(InMemoryLinkStore(), RecordingPublisher(), box, timedelta(minutes=15))


def _published(deps: LinkApiDeps) -> list[LinkRequested]:
    assert isinstance(deps.publisher, RecordingPublisher)
    return [e for e in deps.publisher.events if isinstance(e, LinkRequested)]


async def test_request_emits_one_event_with_the_password_sealed(deps: LinkApiDeps) -> None:
    result = await handlers.request_link(_request(), None, deps)
    assert result.created
    assert result.link.status is LinkStatus.PENDING
    [event] = _published(deps)
    assert event.correlation_id == result.link.link_id
    assert PASSWORD not in event.model_dump_json()
    assert event.data.credentials is not None
    assert PASSWORD in deps.secret_box.open(event.data.credentials, "alice@example.org")


async def test_same_request_in_flight_gets_the_same_link(deps: LinkApiDeps) -> None:
    first = await handlers.request_link(_request(), None, deps)
    second = await handlers.request_link(_request(), None, deps)
    assert second.link.link_id == first.link.link_id
    assert not second.created
    assert len(_published(deps)) == 1


async def test_same_idempotency_key_replays_after_the_link_finished(deps: LinkApiDeps) -> None:
    first = await handlers.request_link(_request(), "key-1", deps)
    await handlers.when_registry_answer_update_status(_linked(first.link.link_id), deps)
    again = await handlers.request_link(_request(), "key-1", deps)
    assert again.link.link_id == first.link.link_id
    assert again.link.status is LinkStatus.LINKED
    assert len(_published(deps)) == 1


async def test_idempotency_key_reused_for_another_request_is_refused(deps: LinkApiDeps) -> None:
    await handlers.request_link(_request(), "key-1", deps)
    with pytest.raises(IdempotencyKeyReused):
        await handlers.request_link(_request(host="other.example.org"), "key-1", deps)


async def test_a_finished_link_frees_the_mailbox_for_a_new_request(deps: LinkApiDeps) -> None:
    first = await handlers.request_link(_request(), None, deps)
    await handlers.when_registry_answer_update_status(_rejected(first.link.link_id), deps)
    second = await handlers.request_link(_request(), None, deps)
    assert second.created
    assert second.link.link_id != first.link.link_id


async def test_status_only_moves_forward(deps: LinkApiDeps) -> None:
    link_id = (await handlers.request_link(_request(), None, deps)).link.link_id
    await handlers.when_registry_answer_update_status(_linked(link_id), deps)
    await handlers.when_mailbox_verified_update_status(_verified(link_id), deps)
    await handlers.when_registry_answer_update_status(_reserved(link_id), deps)
    await handlers.when_authorization_required_show_url(_authorization_required(link_id), deps)
    link = await _status(link_id, deps)
    assert link.status is LinkStatus.LINKED
    assert link.mailbox_id == "mb1"


async def test_reservation_shows_the_link_as_reserved(deps: LinkApiDeps) -> None:
    link_id = (await handlers.request_link(_request(), None, deps)).link.link_id
    await handlers.when_registry_answer_update_status(_reserved(link_id), deps)
    assert (await _status(link_id, deps)).status is LinkStatus.RESERVED


@pytest.mark.parametrize("reserved_first", [True, False], ids=["reserved-first", "verified-first"])
async def test_verification_before_or_after_the_reservation_shows_verified(
    deps: LinkApiDeps, reserved_first: bool
) -> None:
    link_id = (await handlers.request_link(_request(), None, deps)).link.link_id
    if reserved_first:
        await handlers.when_registry_answer_update_status(_reserved(link_id), deps)
    await handlers.when_mailbox_verified_update_status(_verified(link_id), deps)
    if not reserved_first:
        await handlers.when_registry_answer_update_status(_reserved(link_id), deps)
    assert (await _status(link_id, deps)).status is LinkStatus.VERIFIED


async def test_linked_mailbox_shows_as_linked_with_its_id(deps: LinkApiDeps) -> None:
    link_id = (await handlers.request_link(_request(), None, deps)).link.link_id
    await handlers.when_registry_answer_update_status(_reserved(link_id), deps)
    await handlers.when_mailbox_verified_update_status(_verified(link_id), deps)
    await handlers.when_registry_answer_update_status(_linked(link_id), deps)
    link = await _status(link_id, deps)
    assert link.status is LinkStatus.LINKED
    assert link.mailbox_id == "mb1"
    assert not link.already_linked
    assert link.failure is None
    assert (await handlers.request_link(_request(), None, deps)).created  # no longer in flight


async def test_a_reconnect_asked_for_reaches_the_registry_and_ends_linked_reconnected(
    deps: LinkApiDeps,
) -> None:
    request = replace(_request(), reconnect=True)
    link_id = (await handlers.request_link(request, None, deps)).link.link_id
    assert isinstance(deps.publisher, RecordingPublisher)
    [sent] = [e for e in deps.publisher.events if isinstance(e, LinkRequested)]
    assert sent.data.reconnect
    assert request.fingerprint() != _request().fingerprint()  # a key names one or the other
    await handlers.when_registry_answer_update_status(_reserved(link_id), deps)
    data = MailboxReconnectedData(
        link_id=link_id, mailbox_id="mb-kept", owner=OWNER, address="alice@example.org",
        provider=ProviderType.IMAP,
    )  # fmt: skip
    event = MailboxReconnected(correlation_id=link_id, producer="registry", data=data)
    await handlers.when_registry_answer_update_status(event, deps)
    link = await _status(link_id, deps)
    assert link.status is LinkStatus.LINKED
    assert link.mailbox_id == "mb-kept"
    assert link.reconnected
    assert not link.already_linked
    assert (await handlers.request_link(_request(), None, deps)).created  # no longer in flight


async def test_a_mailbox_already_linked_to_the_user_shows_as_linked(deps: LinkApiDeps) -> None:
    link_id = (await handlers.request_link(_request(), None, deps)).link.link_id
    already = _rejected(link_id, FailureCode.ALREADY_LINKED, mailbox_id="mb-existing")
    await handlers.when_registry_answer_update_status(already, deps)
    link = await _status(link_id, deps)
    assert link.status is LinkStatus.LINKED
    assert link.already_linked
    assert link.mailbox_id == "mb-existing"
    assert link.failure is None
    assert (await handlers.request_link(_request(), None, deps)).created


@pytest.mark.parametrize(
    "code",
    [
        FailureCode.ALREADY_LINKED_ELSEWHERE,
        FailureCode.PLAN_LIMIT_REACHED,
        FailureCode.LINK_IN_PROGRESS,
        FailureCode.RESERVATION_EXPIRED,
        FailureCode.IMAP_AUTH_FAILED,
    ],
)
async def test_any_other_rejection_fails_the_link_with_its_reason(
    deps: LinkApiDeps, code: FailureCode
) -> None:
    link_id = (await handlers.request_link(_request(), None, deps)).link.link_id
    await handlers.when_registry_answer_update_status(_reserved(link_id), deps)
    rejected = _rejected(link_id, code)
    await handlers.when_registry_answer_update_status(rejected, deps)
    link = await _status(link_id, deps)
    assert link.status is LinkStatus.FAILED
    assert link.failure == rejected.data.failure
    assert not link.already_linked
    assert link.mailbox_id is None
    assert (await handlers.request_link(_request(), None, deps)).created


async def test_a_verified_mailbox_is_not_linked_until_the_registry_says_so(
    deps: LinkApiDeps,
) -> None:
    link_id = (await handlers.request_link(_request(), None, deps)).link.link_id
    await handlers.when_mailbox_verified_update_status(_verified(link_id), deps)
    assert (await _status(link_id, deps)).status is LinkStatus.VERIFIED
    again = await handlers.request_link(_request(), None, deps)
    assert again.link.link_id == link_id  # still in flight
    assert not again.created


@pytest.mark.parametrize("final", ["linked", "already_linked", "failed"])
async def test_a_final_status_never_changes(deps: LinkApiDeps, final: str) -> None:
    link_id = (await handlers.request_link(_request(), None, deps)).link.link_id
    answers: dict[str, MailboxLinked | LinkRejected] = {
        "linked": _linked(link_id),
        "already_linked": _rejected(link_id, FailureCode.ALREADY_LINKED, mailbox_id="mb-old"),
        "failed": _rejected(link_id, FailureCode.PLAN_LIMIT_REACHED),
    }
    await handlers.when_registry_answer_update_status(answers[final], deps)
    settled = await _status(link_id, deps)
    for answer in [*answers.values(), _reserved(link_id)]:
        await handlers.when_registry_answer_update_status(answer, deps)
    await handlers.when_mailbox_verified_update_status(_verified(link_id), deps)
    await handlers.when_authorization_required_show_url(_authorization_required(link_id), deps)
    assert await _status(link_id, deps) == settled


async def test_an_oauth_request_emits_no_credentials(deps: LinkApiDeps) -> None:
    result = await handlers.request_link(_oauth_request(), None, deps)
    assert result.link.auth is AuthMethod.OAUTH
    assert result.link.provider is ProviderType.GOOGLE
    [event] = _published(deps)
    assert (event.data.provider, event.data.auth) == (ProviderType.GOOGLE, AuthMethod.OAUTH)
    assert event.data.credentials is None
    assert event.data.imap.host == "imap.gmail.com"


@pytest.mark.parametrize("reserved_first", [True, False], ids=["reserved-first", "pending"])
async def test_authorization_required_shows_the_sign_in_url(
    deps: LinkApiDeps, reserved_first: bool
) -> None:
    link_id = (await handlers.request_link(_oauth_request(), None, deps)).link.link_id
    if reserved_first:
        await handlers.when_registry_answer_update_status(_reserved(link_id), deps)
    required = _authorization_required(link_id)
    await handlers.when_authorization_required_show_url(required, deps)
    link = await _status(link_id, deps)
    assert link.status is LinkStatus.AUTHORIZATION_REQUIRED
    assert link.authorize_url == SIGN_IN_URL
    assert link.authorization_expires_at == required.data.expires_at


async def test_a_late_reservation_does_not_hide_the_sign_in_url(deps: LinkApiDeps) -> None:
    link_id = (await handlers.request_link(_oauth_request(), None, deps)).link.link_id
    await handlers.when_authorization_required_show_url(_authorization_required(link_id), deps)
    await handlers.when_registry_answer_update_status(_reserved(link_id), deps)
    link = await _status(link_id, deps)
    assert link.status is LinkStatus.AUTHORIZATION_REQUIRED
    assert link.authorize_url == SIGN_IN_URL


@pytest.mark.parametrize("outcome", ["verified", "linked", "failed"])
async def test_the_sign_in_url_goes_once_the_user_signed_in_or_the_link_ended(
    deps: LinkApiDeps, outcome: str
) -> None:
    link_id = (await handlers.request_link(_oauth_request(), None, deps)).link.link_id
    await handlers.when_registry_answer_update_status(_reserved(link_id), deps)
    await handlers.when_authorization_required_show_url(_authorization_required(link_id), deps)
    await _finish(link_id, outcome, deps)
    link = await _status(link_id, deps)
    assert link.status.value == outcome
    assert (link.authorize_url, link.authorization_expires_at) == (None, None)


@pytest.mark.parametrize("outcome", ["verified", "linked", "failed"])
async def test_authorization_required_after_the_outcome_changes_nothing(
    deps: LinkApiDeps, outcome: str
) -> None:
    link_id = (await handlers.request_link(_oauth_request(), None, deps)).link.link_id
    await _finish(link_id, outcome, deps)
    settled = await _status(link_id, deps)
    await handlers.when_authorization_required_show_url(_authorization_required(link_id), deps)
    assert await _status(link_id, deps) == settled
    assert settled.authorize_url is None


async def test_another_user_cannot_see_the_link(deps: LinkApiDeps) -> None:
    link_id = (await handlers.request_link(_request(), None, deps)).link.link_id
    stranger = MailboxOwner(account_id="acme", user_id="u2")
    assert await handlers.get_link(stranger, link_id, deps) is None


async def _status(link_id: str, deps: LinkApiDeps) -> LinkView:
    link = await handlers.get_link(OWNER, link_id, deps)
    assert link is not None
    return link


async def _finish(link_id: str, outcome: str, deps: LinkApiDeps) -> None:
    if outcome == "verified":
        await handlers.when_mailbox_verified_update_status(_verified(link_id), deps)
    elif outcome == "linked":
        await handlers.when_registry_answer_update_status(_linked(link_id), deps)
    else:
        rejected = _rejected(link_id, FailureCode.RESERVATION_EXPIRED)
        await handlers.when_registry_answer_update_status(rejected, deps)


def _authorization_required(link_id: str) -> AuthorizationRequired:
    data = AuthorizationRequiredData(
        link_id=link_id,
        owner=OWNER,
        address="alice@example.org",
        provider=ProviderType.GOOGLE,
        authorize_url=SIGN_IN_URL,
        expires_at=utc_now() + timedelta(minutes=10),
    )
    return AuthorizationRequired(correlation_id=link_id, producer="oauth-broker", data=data)


def _reserved(link_id: str) -> LinkReserved:
    data = LinkReservedData(
        link_id=link_id,
        owner=OWNER,
        address="alice@example.org",
        expires_at=utc_now() + timedelta(minutes=15),
    )
    return LinkReserved(correlation_id=link_id, producer="registry", data=data)


def _linked(link_id: str) -> MailboxLinked:
    data = MailboxLinkedData(
        link_id=link_id, mailbox_id="mb1", owner=OWNER, address="alice@example.org", provider="imap"
    )
    return MailboxLinked(correlation_id=link_id, producer="test", data=data)


def _rejected(
    link_id: str,
    code: FailureCode = FailureCode.ALREADY_LINKED_ELSEWHERE,
    mailbox_id: str | None = None,
) -> LinkRejected:
    data = LinkRejectedData(
        link_id=link_id,
        owner=OWNER,
        address="alice@example.org",
        failure=Failure.of(code),
        mailbox_id=mailbox_id,
    )
    return LinkRejected(correlation_id=link_id, producer="test", data=data)


def _verified(link_id: str) -> MailboxVerified:
    request = _request()
    sealed = SecretBox({"k": SecretStr(generate_key())}, "k").seal("{}", request.address)
    data = MailboxVerifiedData(
        link_id=link_id,
        owner=OWNER,
        address=request.address,
        provider=request.provider,
        imap=request.imap,
        smtp=request.smtp,
        credentials=sealed,
    )
    return MailboxVerified(correlation_id=link_id, producer="test", data=data)
