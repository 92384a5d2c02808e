"""What link-api does with each event on the topics it reads, from the records' JSON."""

from datetime import timedelta

import pytest
from pydantic import SecretStr

from link_api import handlers
from link_api.domain.link_request import LinkRequest
from link_api.domain.link_status import LinkStatus, LinkView
from link_api.handlers import EVENT_HANDLERS, LinkApiDeps
from link_api_fakes import InMemoryLinkStore
from mailbox_link_contract.events import (
    AuthMethod,
    AuthorizationRequired,
    AuthorizationRequiredData,
    Envelope,
    Failure,
    MailboxOwner,
    MailboxReconnectRequired,
    MailboxReconnectRequiredData,
    ProviderType,
    ServerSettings,
    utc_now,
)
from mailbox_link_contract.failures import FailureCode
from mailbox_link_shared.crypto import SecretBox, generate_key
from mailbox_link_shared.publishing import RecordingPublisher
from mailbox_link_shared.routing import EventRouter

OWNER = MailboxOwner(account_id="acme", user_id="u1")
ADDRESS = "alice@gmail.com"


@pytest.fixture
def deps() -> LinkApiDeps:
    box = SecretBox({"k1": SecretStr(generate_key())}, "k1")
    return LinkApiDeps(InMemoryLinkStore(), RecordingPublisher(), box, timedelta(minutes=15))


async def _oauth_link(deps: LinkApiDeps) -> str:
    server = ServerSettings(host="imap.gmail.com", port=993, security="ssl", username=ADDRESS)
    request = LinkRequest(
        OWNER, ADDRESS, ProviderType.GOOGLE, server, server, None, AuthMethod.OAUTH
    )
    return (await handlers.request_link(request, None, deps)).link.link_id


async def _consume(event: Envelope, deps: LinkApiDeps) -> None:
    """Hands the event to link-api as its subscriber does: read from the record's JSON, routed
    by the handler table."""
    router = EventRouter(EVENT_HANDLERS, deps)
    consumed = router.read(event.model_dump_json())
    assert isinstance(consumed, type(event))
    await router.handle(consumed)


async def _link(link_id: str, deps: LinkApiDeps) -> LinkView:
    link = await deps.store.get_link(link_id)
    assert link is not None
    return link


async def test_authorization_required_from_its_topic_shows_the_url(deps: LinkApiDeps) -> None:
    link_id = await _oauth_link(deps)
    data = AuthorizationRequiredData(
        link_id=link_id,
        owner=OWNER,
        address=ADDRESS,
        provider=ProviderType.GOOGLE,
        authorize_url="https://accounts.google.com/o/oauth2/v2/auth?state=s1",
        expires_at=utc_now() + timedelta(minutes=10),
    )
    event = AuthorizationRequired(correlation_id=link_id, producer="oauth-broker", data=data)
    await _consume(event, deps)
    link = await _link(link_id, deps)
    assert link.status is LinkStatus.AUTHORIZATION_REQUIRED
    assert link.authorize_url == data.authorize_url


async def test_reconnect_required_is_read_and_changes_no_link(deps: LinkApiDeps) -> None:
    link_id = await _oauth_link(deps)
    before = await _link(link_id, deps)
    data = MailboxReconnectRequiredData(
        mailbox_id="mb1",
        link_id=link_id,
        owner=OWNER,
        address=ADDRESS,
        provider=ProviderType.GOOGLE,
        failure=Failure.of(FailureCode.RECONNECT_REQUIRED),
    )
    event = MailboxReconnectRequired(correlation_id=link_id, producer="oauth-broker", data=data)
    await _consume(event, deps)
    assert await _link(link_id, deps) == before
