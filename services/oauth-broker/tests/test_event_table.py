"""oauth-broker's handler table against the catalogue, and every example of the contract replayed
through it: each is handled, knowingly ignored, or (not on oauth-broker's topics) skipped."""

from pydantic import SecretStr

from broker_fakes import FakeProvider, fake_deps
from mailbox_link_contract.events import ProviderType
from mailbox_link_shared.routing import EventRouter, replay_problems, table_gaps
from oauth_broker.adapters.oauth_client import OAuthApp
from oauth_broker.config import SERVICE_NAME
from oauth_broker.domain.providers import GOOGLE
from oauth_broker.handlers import EVENT_HANDLERS, BrokerDeps


def _deps() -> BrokerDeps:
    app = OAuthApp(ProviderType.GOOGLE, "client", SecretStr("secret"), "https://cb.test/", GOOGLE)
    return fake_deps(FakeProvider(app, signed_in_as=("alice@gmail.com",)))


def test_the_table_lists_every_event_type_of_its_topics_and_no_other() -> None:
    assert table_gaps(SERVICE_NAME, EVENT_HANDLERS) == []


async def test_every_example_is_handled_ignored_or_skipped() -> None:
    assert await replay_problems(SERVICE_NAME, EventRouter(EVENT_HANDLERS, _deps())) == []
