"""Health checks of OAuth mailboxes against the local authorization server and the OAuth
Dovecot, with the real client, the real MongoDB-protocol store and the real XOAUTH2 logins:
a due grant is refreshed and its new token logs in (ok); a grant the user revoked answers
reconnect_required (announced once, by the upkeep); a provider outage only degrades."""

# The fixtures are the upkeep tests', imported: pytest passes them as same-named arguments.
# ruff: noqa: F811

import secrets
import ssl
import statistics
import time
from dataclasses import replace
from datetime import timedelta

import httpx
import pytest

# The upkeep's connected fixtures: the local server's Yahoo, a signed-in grant, the store.
from test_refresh_upkeep import (  # noqa: F401 - fixtures
    Clock,
    broker,
    browser,
    client,
    clock,
    linked_grant,
    oauth,
    store,
    tls,
)

from localinfra import LocalOAuthServer, LocalStack
from mailbox_link_contract.events import (
    AuthMethod,
    MailboxChecked,
    MailboxCheckRequested,
    MailboxCheckRequestedData,
    MailboxReconnectRequired,
    ProviderType,
    ServerSettings,
)
from mailbox_link_contract.failures import FailureCode, refuses_credentials
from mailbox_link_shared.network_policy import parse_networks, parse_ports
from mailbox_link_shared.publishing import RecordingPublisher
from oauth_broker.adapters.broker_store import MongoBrokerStore
from oauth_broker.adapters.mailbox_check import OAuthMailboxCheck
from oauth_broker.adapters.oauth_client import OAuthClient
from oauth_broker.domain.grants import GrantStatus
from oauth_broker.handlers import BrokerDeps, when_check_requested_refresh_and_log_in

pytestmark = pytest.mark.connected

ALICE = {"account_id": "acme", "user_id": "u1"}


def _checker(
    stack: LocalStack, store: MongoBrokerStore, client: OAuthClient, clock: Clock
) -> BrokerDeps:
    """The upkeep tests' broker, logging in for real at the OAuth Dovecot."""
    check = OAuthMailboxCheck(
        ssl.create_default_context(cafile=stack.endpoints.ca_file),
        parse_networks(["127.0.0.0/8"]),
        10.0,
        parse_ports(["1-65535"]),
    )
    return replace(broker(store, client, clock), check_mailbox=check)


def _requested(stack: LocalStack, link_id: str, address: str) -> MailboxCheckRequested:
    e = stack.endpoints
    imap = ServerSettings(
        host=e.tls_hostname, port=e.oauth_imaps_port, security="ssl", username=address
    )
    data = MailboxCheckRequestedData.model_validate(
        {
            "check_id": f"m1-{secrets.token_hex(4)}",
            "mailbox_id": "m1",
            "link_id": link_id,
            "owner": ALICE,
            "address": address,
            "provider": ProviderType.YAHOO,
            "auth": AuthMethod.OAUTH,
            "imap": imap,
            "smtp": imap.model_copy(update={"port": e.oauth_submissions_port}),
        }
    )
    return MailboxCheckRequested(correlation_id=link_id, producer="test", data=data)


def _answers(deps: BrokerDeps) -> list[MailboxChecked]:
    assert isinstance(deps.publisher, RecordingPublisher)
    return [e for e in deps.publisher.events if isinstance(e, MailboxChecked)]


def _reconnects(deps: BrokerDeps) -> list[MailboxReconnectRequired]:
    assert isinstance(deps.publisher, RecordingPublisher)
    return [e for e in deps.publisher.events if isinstance(e, MailboxReconnectRequired)]


async def test_a_due_grant_is_refreshed_and_its_new_token_logs_in(
    local_stack: LocalStack,
    oauth: LocalOAuthServer,
    client: OAuthClient,
    store: MongoBrokerStore,
    clock: Clock,
    browser: httpx.AsyncClient,
) -> None:
    deps = _checker(local_stack, store, client, clock)
    link_id, address = await linked_grant(oauth, client, store, clock, browser)
    await when_check_requested_refresh_and_log_in(_requested(local_stack, link_id, address), deps)
    [answer] = _answers(deps)
    assert answer.data.failure is None
    grant = await store.get_grant(link_id)
    assert grant is not None
    assert grant.expires_at > clock() + deps.refresh_margin  # refreshed before the logins


async def test_a_grant_the_user_revoked_answers_reconnect_required_once(
    local_stack: LocalStack,
    oauth: LocalOAuthServer,
    client: OAuthClient,
    store: MongoBrokerStore,
    clock: Clock,
    browser: httpx.AsyncClient,
) -> None:
    deps = _checker(local_stack, store, client, clock)
    link_id, address = await linked_grant(oauth, client, store, clock, browser)
    oauth.revoke_refresh_tokens("yahoo", address)  # the user removed our app
    for _ in range(2):
        await when_check_requested_refresh_and_log_in(
            _requested(local_stack, link_id, address), deps
        )
    codes = [answer.data.failure.code for answer in _answers(deps) if answer.data.failure]
    assert codes == [FailureCode.RECONNECT_REQUIRED] * 2
    [announced] = _reconnects(deps)  # the upkeep's, not repeated by the second check
    assert announced.data.link_id == link_id
    grant = await store.get_grant(link_id)
    assert grant is not None
    assert grant.status is GrantStatus.RECONNECT_REQUIRED


async def test_a_provider_outage_only_degrades(
    local_stack: LocalStack,
    oauth: LocalOAuthServer,
    client: OAuthClient,
    store: MongoBrokerStore,
    clock: Clock,
    browser: httpx.AsyncClient,
) -> None:
    deps = _checker(local_stack, store, client, clock)
    link_id, address = await linked_grant(oauth, client, store, clock, browser)
    oauth.token_outage("yahoo", 503, "temporarily_unavailable")
    try:
        await when_check_requested_refresh_and_log_in(
            _requested(local_stack, link_id, address), deps
        )
    finally:
        oauth.end_token_outage("yahoo")
    [answer] = _answers(deps)
    assert answer.data.failure is not None
    assert answer.data.failure.code is FailureCode.PROVIDER_ERROR
    assert not refuses_credentials(answer.data.failure.code)
    assert not _reconnects(deps)


async def test_the_cost_of_one_check(
    local_stack: LocalStack,
    oauth: LocalOAuthServer,
    client: OAuthClient,
    store: MongoBrokerStore,
    clock: Clock,
    browser: httpx.AsyncClient,
) -> None:
    """Prints what one health check of an OAuth mailbox costs on loopback: with a fresh token
    (XOAUTH2 logins only, each introspected by Dovecot) and with a refresh first (the clock
    moved an hour each time); medians of 20 and 10, after one warm-up."""
    deps = _checker(local_stack, store, client, clock)
    link_id, address = await linked_grant(oauth, client, store, clock, browser)
    request = _requested(local_stack, link_id, address)

    async def timed(moved: timedelta) -> float:
        clock.advance(moved)
        started = time.perf_counter()
        await when_check_requested_refresh_and_log_in(request, deps)
        seconds = time.perf_counter() - started
        assert _answers(deps)[-1].data.failure is None
        return seconds

    await timed(timedelta(0))  # the warm-up (its grant is due: refreshed)
    fresh = sorted([await timed(timedelta(0)) for _ in range(20)])
    refreshed = sorted([await timed(timedelta(hours=1)) for _ in range(10)])
    print(
        f"oauth mailbox check: fresh token median {statistics.median(fresh) * 1000:.1f} ms "
        f"(slowest {fresh[-1] * 1000:.1f}); with a refresh median "
        f"{statistics.median(refreshed) * 1000:.1f} ms (slowest {refreshed[-1] * 1000:.1f})"
    )
