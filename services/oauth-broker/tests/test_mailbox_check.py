"""The broker's mailbox check logs in with the mechanism a provider is configured with, against
the local OAuth Dovecot (which introspects tokens at the stack's token endpoint)."""

import secrets
from collections.abc import Iterator

import pytest

from localinfra.stack import LocalStack
from mailbox_link_contract.events import ServerSettings
from mailbox_link_contract.failures import FailureCode
from mailbox_link_contract.values import ConnectionSecurity
from mailbox_link_shared.mail_probes import ProbeFailed
from mailbox_link_shared.network_policy import parse_networks, parse_ports
from mailbox_link_shared.oidc_providers import SaslMechanism
from mailbox_link_shared.settings import tls_context
from oauth_broker.adapters.mailbox_check import OAuthMailboxCheck

pytestmark = pytest.mark.connected


@pytest.fixture
def user_and_token(local_stack: LocalStack) -> Iterator[tuple[str, str]]:
    user = f"bearer-{secrets.token_hex(4)}@example.org"
    local_stack.add_mail_user(user, secrets.token_urlsafe(16))
    token = secrets.token_urlsafe(24)
    local_stack.grant_oauth_token(token, user)
    yield user, token
    local_stack.revoke_oauth_token(token)


def _check(stack: LocalStack) -> OAuthMailboxCheck:
    return OAuthMailboxCheck(
        tls_context(stack.endpoints.ca_file),
        parse_networks(["127.0.0.0/8"]),
        10.0,
        parse_ports(["1-65535"]),
    )


def _servers(stack: LocalStack, user: str) -> tuple[ServerSettings, ServerSettings]:
    e = stack.endpoints
    ssl = ConnectionSecurity.SSL
    imap = ServerSettings(host=e.tls_hostname, port=e.oauth_imaps_port, security=ssl, username=user)
    smtp = imap.model_copy(update={"port": e.oauth_submissions_port})
    return imap, smtp


@pytest.mark.parametrize("mechanism", list(SaslMechanism))
async def test_each_configured_mechanism_logs_in_to_imap_and_smtp(
    local_stack: LocalStack, user_and_token: tuple[str, str], mechanism: SaslMechanism
) -> None:
    user, token = user_and_token
    imap, smtp = _servers(local_stack, user)
    await _check(local_stack)(imap, smtp, token, mechanism)


@pytest.mark.parametrize("mechanism", list(SaslMechanism))
async def test_a_token_the_server_does_not_accept_fails_the_imap_login(
    local_stack: LocalStack, user_and_token: tuple[str, str], mechanism: SaslMechanism
) -> None:
    user, _ = user_and_token
    imap, smtp = _servers(local_stack, user)
    with pytest.raises(ProbeFailed) as failed:
        await _check(local_stack)(imap, smtp, "not-" + secrets.token_urlsafe(12), mechanism)
    assert failed.value.code is FailureCode.IMAP_AUTH_FAILED
