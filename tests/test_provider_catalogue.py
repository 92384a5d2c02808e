"""Every OAuth provider of the contract is known everywhere it must be: the broker's endpoints
and settings, link-api's hosting table, and the local OAuth server that e2e and `make run` use.

`ProviderType` (the contract) says who verifies a link; link-api's `Provider` says who hosts a
mailbox (iCloud hosts, but the imap-verifier verifies it with an app password), which is why
both exist. This test is what keeps them, and the other lists, in step.
"""

import json
import os

import pytest

from link_api.config import Settings as LinkApiSettings
from link_api.domain.oidc import OidcCatalogue
from link_api.domain.providers import OAUTH_PROVIDER_TYPES, PROVIDER_HOSTS
from localinfra import oauth_server, services
from mailbox_link_contract.events import ProviderType
from mailbox_link_shared.crypto import generate_key
from mailbox_link_shared.rate_limit_settings import PROVIDER_MAIL_HOSTS
from oauth_broker.config import Settings as BrokerSettings
from oauth_broker.domain.providers import DEFAULT_ENDPOINTS, provider_key

# `oidc` is the generic type: its providers are the operator's (named by `oidc_provider`), so no
# built-in table lists it.
OAUTH_TYPES = [p for p in ProviderType if p not in {ProviderType.IMAP, ProviderType.OIDC}]


@pytest.mark.parametrize("provider", OAUTH_TYPES)
def test_every_oauth_provider_is_known_to_the_broker_link_api_and_the_local_server(
    provider: ProviderType,
) -> None:
    assert provider in DEFAULT_ENDPOINTS, "oauth_broker/domain/providers.py"
    assert f"oauth_{provider.value}" in BrokerSettings.model_fields, "oauth_broker/config.py"
    assert provider in OAUTH_PROVIDER_TYPES.values(), "link_api/domain/providers.py"
    assert provider.value in oauth_server.PROVIDERS, "localinfra/oauth_server.py"
    assert provider.value in services.OAUTH_PROVIDERS, "localinfra/services.py"


def test_no_list_names_a_provider_the_contract_lacks() -> None:
    known = {p.value for p in OAUTH_TYPES}
    assert {p.value for p in DEFAULT_ENDPOINTS} == known
    assert set(oauth_server.PROVIDERS) == known
    assert set(services.OAUTH_PROVIDERS) == known


def test_the_hosts_without_a_host_budget_are_the_big_providers_own_servers() -> None:
    """The verifier's rate limits skip the per-host budget for exactly these (docs/adr/0015)."""
    assert frozenset().union(*PROVIDER_HOSTS.values()) == PROVIDER_MAIL_HOSTS


def test_configured_oidc_providers_are_known_to_link_api_and_the_broker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One MBL_OIDC_PROVIDERS, in the agreed format, read by both: what link-api offers and
    sends (provider oidc, oidc_provider, the configured servers) is what the broker signs in
    with, under the same key."""
    for name in list(os.environ):
        if name.startswith("MBL_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("MBL_ENCRYPTION_KEYS", json.dumps({"k1": generate_key()}))
    server = {"host": "mail.corp.example", "port": 993, "security": "ssl"}
    corp = {
        "display_name": "Corp sign-in",
        "issuer": "https://idp.corp.example",
        "discovery_url": "https://idp.corp.example/.well-known/openid-configuration",
        "client_id": "mailbox-link",
        "scopes": ["openid", "email", "offline_access"],
        "mail_scopes": [],
        "domains": ["corp.example"],
        "imap": server,
        "smtp": {**server, "port": 465},
        "sasl_mechanism": "xoauth2",
        "prompt": None,
        "authorize_params": {},
        "offline_access": "offline_access",
        "token_endpoint_auth_method": None,
        "require_id_token": True,
        "email_claim": "email",
    }
    monkeypatch.setenv(
        "MBL_OIDC_PROVIDERS", json.dumps({"corp": corp, "lab": corp | {"domains": []}})
    )
    monkeypatch.setenv("MBL_OIDC_PROVIDERS__CORP__CLIENT_SECRET", "a+b%c:d")

    offered = OidcCatalogue.of(LinkApiSettings().oidc_providers)
    broker = BrokerSettings().oidc()

    assert set(broker) == {provider_key(ProviderType.OIDC, name) for name in offered.providers}
    plan = offered.providers["corp"].plan()
    key = provider_key(plan.provider_type, plan.oidc_provider)
    name, configured = broker[key]
    assert name == "corp"
    assert configured.configured  # the secret reached the broker only
    assert (plan.settings.imap.host, plan.settings.smtp.port) == (
        configured.imap.host, configured.smtp.port,
    )  # fmt: skip
