"""Generic OpenID Connect providers from MBL_OIDC_PROVIDERS (the format link-api shares), the
per-provider sign-in options of the built-in ones, and the authorize URL each provider gets."""

import json
import os
from urllib.parse import parse_qs, urlsplit

import pytest
from pydantic import SecretStr, ValidationError

from mailbox_link_contract.events import ProviderType
from mailbox_link_shared.crypto import generate_key
from mailbox_link_shared.oidc_providers import SaslMechanism
from mailbox_link_shared.settings import tls_context
from oauth_broker.adapters.discovery import (
    DiscoveryRefused,
    apply_discovery,
    check_issuer,
    expected_issuer,
    require_endpoints,
)
from oauth_broker.adapters.oauth_client import OAuthApp, OAuthClient
from oauth_broker.bootstrap import _endpoints, _mail_servers
from oauth_broker.config import Settings
from oauth_broker.domain.providers import (
    AOL,
    GOOGLE,
    MICROSOFT,
    YAHOO,
    MailboxProfile,
    OfflineAccess,
    ProviderEndpoints,
    TokenAuthMethod,
    provider_key,
)
from oauth_broker.domain.sessions import SessionSecrets

ISSUER = "https://idp.corp.example"
CORP = {
    "display_name": "Corp sign-in",
    "issuer": ISSUER,
    "client_id": "mailbox-link",
    "domains": ["Corp.Example", "corp-mail.example."],
    "imap": {"host": "mail.corp.example", "port": 993, "security": "ssl"},
    "smtp": {"host": "mail.corp.example", "port": 465, "security": "ssl"},
}
SECRET = "s3cr+t%2F:with:colons"


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """An environment with only the encryption keys among the MBL_* variables."""
    for name in list(os.environ):
        if name.startswith("MBL_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("MBL_ENCRYPTION_KEYS", json.dumps({"k1": generate_key()}))
    return monkeypatch


def _configure(env: pytest.MonkeyPatch, **corp: object) -> None:
    env.setenv("MBL_OIDC_PROVIDERS", json.dumps({"corp": {**CORP, **corp}}))


# --- MBL_OIDC_PROVIDERS ------------------------------------------------------------------------


def test_the_secret_given_alone_joins_the_providers_json(env: pytest.MonkeyPatch) -> None:
    _configure(env)
    env.setenv("MBL_OIDC_PROVIDERS__CORP__CLIENT_SECRET", SECRET)

    settings = Settings()

    [(key, (name, corp))] = settings.oidc().items()
    assert (key, name) == ("oidc:corp", "corp")
    assert corp.configured
    assert corp.client_secret.get_secret_value() == SECRET
    assert corp.client_id == "mailbox-link"
    assert corp.domains == ("corp.example", "corp-mail.example")
    assert SECRET not in repr(settings)


def test_the_documented_defaults(env: pytest.MonkeyPatch) -> None:
    _configure(env)

    corp = Settings().oidc_providers["corp"]

    assert corp.discovery_document_url == f"{ISSUER}/.well-known/openid-configuration"
    assert corp.scopes == ("openid", "email", "offline_access")
    assert corp.mail_scopes == ()
    assert corp.offline_access is OfflineAccess.SCOPE
    assert corp.prompt is None
    assert corp.token_endpoint_auth_method is None
    assert corp.require_id_token is True
    assert corp.email_claim == "email"
    assert corp.sasl_mechanism is SaslMechanism.XOAUTH2
    assert not corp.configured  # no secret yet: bootstrap leaves it out, logged


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"client_secert": "x"}, "client_secert"),  # a typo is refused, not ignored
        ({"authorize_params": {"state": "x"}}, "state"),
        ({"authorize_params": {"prompt": "none"}}, "prompt"),
        ({"issuer": "http://idp.corp.example"}, "https"),
        ({"scopes": ["email"]}, "openid"),
        ({"offline_access": "sometimes"}, "offline_access"),
        ({"token_endpoint_auth_method": "private_key_jwt"}, "token_endpoint_auth_method"),
        ({"sasl_mechanism": "plain"}, "sasl_mechanism"),
    ],
)
def test_a_wrong_setting_is_refused_naming_it(
    env: pytest.MonkeyPatch, change: dict[str, object], field: str
) -> None:
    _configure(env, **change)

    with pytest.raises(ValidationError, match=field):
        Settings()


def test_a_provider_name_must_be_short_and_lowercase(env: pytest.MonkeyPatch) -> None:
    env.setenv("MBL_OIDC_PROVIDERS", json.dumps({"Corp IdP": CORP}))

    with pytest.raises(ValidationError, match="oidc_providers"):
        Settings()


def test_the_configured_servers_and_mechanism_are_the_providers(env: pytest.MonkeyPatch) -> None:
    _configure(env, sasl_mechanism="oauthbearer", client_secret=SECRET)

    servers = _mail_servers(Settings())["oidc:corp"]

    assert (servers.imap.host, servers.imap.port) == ("mail.corp.example", 993)
    assert servers.mechanism is SaslMechanism.OAUTHBEARER


async def test_the_built_in_providers_options_are_configurable(env: pytest.MonkeyPatch) -> None:
    env.setenv("MBL_OAUTH_MICROSOFT__CLIENT_ID", "ms-app")
    env.setenv("MBL_OAUTH_MICROSOFT__CLIENT_SECRET", "ms-secret")
    env.setenv("MBL_OAUTH_MICROSOFT__PROMPT", "")
    env.setenv("MBL_OAUTH_MICROSOFT__AUTHORIZE_PARAMS", json.dumps({"domain_hint": "corp.example"}))
    env.setenv("MBL_OAUTH_MICROSOFT__TOKEN_ENDPOINT_AUTH_METHOD", "client_secret_post")
    env.setenv("MBL_OAUTH_YAHOO__AUTHORIZE_PARAMS", json.dumps({"nonce": "mine"}))

    with pytest.raises(ValidationError, match="nonce"):
        Settings()
    env.delenv("MBL_OAUTH_YAHOO__AUTHORIZE_PARAMS")
    settings = Settings()
    configured = settings.providers()[ProviderType.MICROSOFT]

    endpoints = await _endpoints(ProviderType.MICROSOFT, configured, settings)
    assert endpoints.prompt == ""
    assert endpoints.authorize_params == (("domain_hint", "corp.example"),)
    assert endpoints.token_auth_method is TokenAuthMethod.POST
    assert endpoints.offline_access is OfflineAccess.SCOPE  # the default stays
    query = _authorize_query(endpoints)
    assert "prompt" not in query
    assert query["domain_hint"] == ["corp.example"]


# --- the authorize URL, per provider -----------------------------------------------------------


def _authorize_query(endpoints: ProviderEndpoints) -> dict[str, list[str]]:
    app = OAuthApp(ProviderType.OIDC, "app", SecretStr("s"), "https://cb.test/cb", endpoints)
    client = OAuthClient(app, tls_context(None), 5.0)
    fresh = SessionSecrets.generate().started("state-1")
    url = client.authorize_url(fresh, login_hint="alice@corp.example")
    query = parse_qs(urlsplit(url).query)
    # The protocol's own parameters are always there, whatever the provider's options.
    assert query["state"] == ["state-1"]
    assert query["nonce"] == [fresh.nonce]
    assert query["code_challenge_method"] == ["S256"]
    assert query["login_hint"] == ["alice@corp.example"]
    return query


def _oidc(**options: object) -> ProviderEndpoints:
    return ProviderEndpoints(
        authorize_url=f"{ISSUER}/authorize", token_url=f"{ISSUER}/token",
        userinfo_url=f"{ISSUER}/userinfo", jwks_url=f"{ISSUER}/jwks", issuer=ISSUER,
        revocation_url=None, profile=MailboxProfile.USERINFO, profile_url=None,
        scopes=("openid", "email"), mail_scopes=(), **options,  # type: ignore[arg-type]
    )  # fmt: skip


@pytest.mark.parametrize(
    ("endpoints", "expected", "scopes"),
    [
        # Google: access_type=offline with a consent just shown; no offline_access scope.
        (GOOGLE, {"access_type": "offline", "prompt": "consent"}, GOOGLE.scopes),
        # Microsoft: the offline_access scope; the account picker.
        (MICROSOFT, {"prompt": "select_account"}, MICROSOFT.scopes),
        (YAHOO, {"prompt": "login"}, YAHOO.scopes),
        (AOL, {"prompt": "login"}, AOL.scopes),
        # A standard provider: offline_access is added, with prompt=consent (OIDC Core 11).
        (
            _oidc(offline_access=OfflineAccess.SCOPE),
            {"prompt": "consent"},
            ("openid", "email", "offline_access"),
        ),
        (
            _oidc(offline_access=OfflineAccess.ACCESS_TYPE, prompt="select_account"),
            {"access_type": "offline", "prompt": "select_account"},
            ("openid", "email"),
        ),
        (
            _oidc(authorize_params=(("acr_values", "mfa"), ("ui_locales", "de"))),
            {"acr_values": "mfa", "ui_locales": "de"},
            ("openid", "email"),
        ),
        (_oidc(offline_access=OfflineAccess.SCOPE, prompt=""), {}, None),
    ],
)
def test_each_provider_asks_for_lasting_access_its_way(
    endpoints: ProviderEndpoints,
    expected: dict[str, str],
    scopes: tuple[str, ...] | None,
) -> None:
    query = _authorize_query(endpoints)

    options = {k: v[0] for k, v in query.items() if k in {"prompt", "access_type", *expected}}
    assert options == expected
    if scopes is not None:
        assert query["scope"] == [" ".join(scopes)]


def test_an_id_token_is_needed_whenever_openid_is_asked() -> None:
    assert all(p.needs_id_token for p in (GOOGLE, MICROSOFT, YAHOO, AOL))
    without_openid = _oidc(require_id_token=False)
    assert without_openid.needs_id_token  # openid asked: the flag cannot turn it off
    plain_oauth = ProviderEndpoints(**{**without_openid.__dict__, "scopes": ("mail",)})
    assert not plain_oauth.needs_id_token
    assert ProviderEndpoints(**{**plain_oauth.__dict__, "require_id_token": True}).needs_id_token


def test_provider_keys() -> None:
    assert provider_key(ProviderType.GOOGLE, None) == "google"
    assert provider_key(ProviderType.GOOGLE, None) in {ProviderType.GOOGLE: "a ProviderType"}
    assert provider_key(ProviderType.OIDC, "corp") == "oidc:corp"
    # Only an OIDC link's name counts.
    assert provider_key(ProviderType.YAHOO, "corp") == "yahoo"


# --- discovery: what it adds, and what makes the broker refuse it -------------------------------


def test_discovery_tells_the_client_authentication_and_the_iss_parameter() -> None:
    document = {
        "issuer": ISSUER,
        "token_endpoint": f"{ISSUER}/token",
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt"],
        "authorization_response_iss_parameter_supported": True,
    }

    endpoints = apply_discovery(_oidc(), document)

    assert endpoints.token_auth_methods_supported == ("client_secret_post", "private_key_jwt")
    assert endpoints.iss_parameter_supported
    assert not apply_discovery(_oidc(), {"issuer": ISSUER}).iss_parameter_supported


def test_a_discovery_document_of_another_issuer_is_refused() -> None:
    check_issuer({"issuer": ISSUER}, ISSUER)
    for other in ("https://attacker.example", f"{ISSUER}/", None):
        with pytest.raises(DiscoveryRefused, match="issuer"):
            check_issuer({"issuer": other}, ISSUER)


def test_the_expected_issuer_is_the_configured_one_or_the_discovery_urls() -> None:
    url = f"{ISSUER}/tenant/.well-known/openid-configuration"
    assert expected_issuer(None, url) == f"{ISSUER}/tenant"
    assert expected_issuer("https://configured.example", url) == "https://configured.example"
    assert expected_issuer(None, f"{ISSUER}/discovery.json") is None


def test_a_generic_provider_needs_every_endpoint_from_discovery() -> None:
    with pytest.raises(DiscoveryRefused, match="userinfo_endpoint"):
        require_endpoints(
            {"authorization_endpoint": "a", "token_endpoint": "t", "jwks_uri": "j"},
            ("authorization_endpoint", "token_endpoint", "userinfo_endpoint", "jwks_uri"),
        )
