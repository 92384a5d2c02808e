"""oauth-broker's handler table against the catalogue, and every example of the contract replayed
through it: each is handled, knowingly ignored, or (not on oauth-broker's topics) skipped."""

from datetime import timedelta

from pydantic import SecretStr

from broker_fakes import BOX, FakeClock, FakeMailServers, FakeProvider, InMemoryBrokerStore
from mailbox_link_contract.events import ProviderType
from mailbox_link_shared.publishing import RecordingPublisher
from mailbox_link_shared.routing import EventRouter, replay_problems, table_gaps
from oauth_broker.adapters.oauth_client import OAuthApp
from oauth_broker.config import SERVICE_NAME
from oauth_broker.domain.providers import GOOGLE
from oauth_broker.handlers import EVENT_HANDLERS, BrokerDeps


def _deps() -> BrokerDeps:
    app = OAuthApp(ProviderType.GOOGLE, "client", SecretStr("secret"), "https://cb.test/", GOOGLE)
    return BrokerDeps(
        store=InMemoryBrokerStore(),
        publisher=RecordingPublisher(),
        secret_box=BOX,
        clients={ProviderType.GOOGLE: FakeProvider(app, signed_in_as=("alice@gmail.com",))},
        check_mailbox=FakeMailServers(),
        session_lifetime=timedelta(minutes=10),
        refresh_margin=timedelta(minutes=5),
        clock=FakeClock(),
    )


def test_the_table_lists_every_event_type_of_its_topics_and_no_other() -> None:
    assert table_gaps(SERVICE_NAME, EVENT_HANDLERS) == []


async def test_every_example_is_handled_ignored_or_skipped() -> None:
    assert await replay_problems(SERVICE_NAME, EventRouter(EVENT_HANDLERS, _deps())) == []
