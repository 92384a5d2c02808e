"""How each provider's endpoints are built: defaults, discovery document, operator overrides;
and the broker's provider settings read from MBL_OAUTH_<PROVIDER>__<FIELD>."""

import json
import os
from typing import Any

import pytest
from pydantic import ValidationError

from mailbox_link_contract.events import ProviderType
from mailbox_link_contract.values import ConnectionSecurity
from mailbox_link_shared.crypto import generate_key
from oauth_broker.adapters.discovery import apply_discovery, apply_overrides
from oauth_broker.config import Settings
from oauth_broker.domain.providers import AOL, GOOGLE, MICROSOFT, YAHOO

LOCAL = "https://localhost:8443"


def document(provider: str, *, revocation: bool = False) -> dict[str, Any]:
    issuer = f"{LOCAL}/{provider}"
    found = {
        "issuer": issuer,
        "authorization_endpoint": f"{issuer}/authorize",
        "token_endpoint": f"{issuer}/token",
        "userinfo_endpoint": f"{issuer}/userinfo",
        "jwks_uri": f"{issuer}/jwks",
        "scopes_supported": ["openid", "email"],
        "code_challenge_methods_supported": ["S256"],
    }
    if revocation:
        found["revocation_endpoint"] = f"{issuer}/revoke"
    return found


# --- apply_discovery ---------------------------------------------------------------------------


def test_discovery_takes_the_documents_endpoints() -> None:
    endpoints = apply_discovery(GOOGLE, document("google", revocation=True))

    assert endpoints.authorize_url == f"{LOCAL}/google/authorize"
    assert endpoints.token_url == f"{LOCAL}/google/token"
    assert endpoints.userinfo_url == f"{LOCAL}/google/userinfo"
    assert endpoints.jwks_url == f"{LOCAL}/google/jwks"
    assert endpoints.issuer == f"{LOCAL}/google"
    assert endpoints.revocation_url == f"{LOCAL}/google/revoke"
    # What discovery does not describe stays the provider's.
    assert endpoints.profile_url == GOOGLE.profile_url
    assert endpoints.scopes == GOOGLE.scopes
    assert endpoints.mail_scopes == GOOGLE.mail_scopes
    assert endpoints.authorize_params == GOOGLE.authorize_params
    assert endpoints.profile is GOOGLE.profile


def test_discovery_keeps_microsofts_issuer_unchecked() -> None:
    endpoints = apply_discovery(MICROSOFT, document("microsoft"))

    assert endpoints.issuer is None
    assert endpoints.token_url == f"{LOCAL}/microsoft/token"
    assert endpoints.jwks_url == f"{LOCAL}/microsoft/jwks"
    assert endpoints.revocation_url is None
    assert endpoints.token_scopes == MICROSOFT.token_scopes
    assert endpoints.profile_scopes == MICROSOFT.profile_scopes


def test_discovery_ignores_missing_and_empty_fields() -> None:
    partial = {"token_endpoint": f"{LOCAL}/yahoo/token", "userinfo_endpoint": "", "issuer": None}

    endpoints = apply_discovery(YAHOO, partial)

    assert endpoints.token_url == f"{LOCAL}/yahoo/token"
    assert endpoints.userinfo_url == YAHOO.userinfo_url
    assert endpoints.issuer == YAHOO.issuer
    assert endpoints.authorize_url == YAHOO.authorize_url
    assert endpoints.revocation_url is None


def test_discovery_without_a_revocation_endpoint_keeps_the_default() -> None:
    # Google's own document names one; a document that does not leaves the default alone.
    assert apply_discovery(GOOGLE, document("google")).revocation_url == GOOGLE.revocation_url


# --- apply_overrides ---------------------------------------------------------------------------


def test_explicit_settings_win_over_discovery() -> None:
    discovered = apply_discovery(GOOGLE, document("google", revocation=True))

    endpoints = apply_overrides(
        discovered,
        {
            "token_url": "https://tokens.test/token",
            "profile_url": f"{LOCAL}/google/gmail/v1/users/me/profile",
            "issuer": "https://issuer.test",
            "scopes": ["openid", "https://mail.google.com/"],
            "authorize_url": None,
            "userinfo_url": None,
            "jwks_url": None,
            "revocation_url": None,
        },
    )

    assert endpoints.token_url == "https://tokens.test/token"
    assert endpoints.profile_url == f"{LOCAL}/google/gmail/v1/users/me/profile"
    assert endpoints.issuer == "https://issuer.test"
    assert endpoints.scopes == ("openid", "https://mail.google.com/")
    assert isinstance(endpoints.scopes, tuple)
    # None means "not set": the discovered values stay.
    assert endpoints.authorize_url == f"{LOCAL}/google/authorize"
    assert endpoints.userinfo_url == f"{LOCAL}/google/userinfo"
    assert endpoints.jwks_url == f"{LOCAL}/google/jwks"
    assert endpoints.revocation_url == f"{LOCAL}/google/revoke"


def test_no_overrides_change_nothing() -> None:
    fields = ("authorize_url", "token_url", "issuer", "revocation_url", "profile_url", "scopes")
    assert apply_overrides(MICROSOFT, dict.fromkeys(fields)) == MICROSOFT
    assert apply_overrides(MICROSOFT, {}) == MICROSOFT


# --- Settings from the environment -------------------------------------------------------------


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """An environment with only the encryption keys among the MBL_* variables."""
    for name in list(os.environ):
        if name.startswith("MBL_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("MBL_ENCRYPTION_KEYS", json.dumps({"k1": generate_key()}))
    return monkeypatch


def test_no_provider_is_configured_by_default(env: pytest.MonkeyPatch) -> None:
    settings = Settings()

    assert settings.providers() == {}
    assert settings.oauth_google.client_id == ""


def test_nested_provider_settings(env: pytest.MonkeyPatch) -> None:
    env.setenv("MBL_OAUTH_GOOGLE__CLIENT_ID", "google-app")
    env.setenv("MBL_OAUTH_GOOGLE__CLIENT_SECRET", "google-secret")
    env.setenv(
        "MBL_OAUTH_GOOGLE__DISCOVERY_URL", f"{LOCAL}/google/.well-known/openid-configuration"
    )
    env.setenv("MBL_OAUTH_GOOGLE__PROFILE_URL", f"{LOCAL}/google/gmail/v1/users/me/profile")
    env.setenv("MBL_OAUTH_GOOGLE__SCOPES", json.dumps(["openid", "https://mail.google.com/"]))
    env.setenv(
        "MBL_OAUTH_GOOGLE__IMAP", json.dumps({"host": "localhost", "port": 993, "security": "ssl"})
    )
    env.setenv("MBL_OAUTH_MICROSOFT__CLIENT_ID", "ms-app")
    env.setenv("MBL_OAUTH_MICROSOFT__CLIENT_SECRET", "ms-secret")
    env.setenv("MBL_OAUTH_MICROSOFT__REDIRECT_URI", "https://broker.test/ms/callback")
    # An app id without its secret is not usable: that provider stays off.
    env.setenv("MBL_OAUTH_YAHOO__CLIENT_ID", "yahoo-app")
    env.setenv("MBL_OAUTH_REDIRECT_URI", "https://broker.test/v1/oauth/callback")

    settings = Settings()

    providers = settings.providers()
    assert set(providers) == {ProviderType.GOOGLE, ProviderType.MICROSOFT}
    google = providers[ProviderType.GOOGLE]
    assert google.client_id == "google-app"
    assert google.client_secret.get_secret_value() == "google-secret"
    assert google.discovery_url == f"{LOCAL}/google/.well-known/openid-configuration"
    assert google.profile_url == f"{LOCAL}/google/gmail/v1/users/me/profile"
    assert google.scopes == ["openid", "https://mail.google.com/"]
    assert google.imap is not None
    assert (google.imap.host, google.imap.port) == ("localhost", 993)
    assert google.imap.security is ConnectionSecurity.SSL
    assert google.smtp is None
    assert google.redirect_uri is None
    microsoft = providers[ProviderType.MICROSOFT]
    assert microsoft.redirect_uri == "https://broker.test/ms/callback"
    assert microsoft.discovery_url is None
    assert settings.oauth_yahoo.client_id == "yahoo-app"
    assert not settings.oauth_yahoo.configured
    assert settings.oauth_redirect_uri == "https://broker.test/v1/oauth/callback"
    assert "google-secret" not in repr(settings)


def test_settings_feed_the_overrides(env: pytest.MonkeyPatch) -> None:
    env.setenv("MBL_OAUTH_AOL__CLIENT_ID", "aol-app")
    env.setenv("MBL_OAUTH_AOL__CLIENT_SECRET", "aol-secret")
    env.setenv("MBL_OAUTH_AOL__TOKEN_URL", f"{LOCAL}/aol/token")
    env.setenv("MBL_OAUTH_AOL__SCOPES", json.dumps(["openid", "mail-w"]))

    aol = Settings().providers()[ProviderType.AOL]
    fields = ("authorize_url", "token_url", "userinfo_url", "jwks_url", "issuer",
              "revocation_url", "profile_url", "scopes")  # fmt: skip
    discovered = apply_discovery(AOL, document("aol"))
    endpoints = apply_overrides(discovered, {f: getattr(aol, f) for f in fields})

    assert endpoints.token_url == f"{LOCAL}/aol/token"
    assert endpoints.scopes == ("openid", "mail-w")
    assert endpoints.authorize_url == f"{LOCAL}/aol/authorize"


def test_a_misspelt_provider_field_is_refused(env: pytest.MonkeyPatch) -> None:
    env.setenv("MBL_OAUTH_GOOGLE__CLIENTID", "google-app")

    with pytest.raises(ValidationError, match=r"(?i)oauth_google\.clientid"):
        Settings()


def test_the_encryption_keys_are_required(env: pytest.MonkeyPatch) -> None:
    env.delenv("MBL_ENCRYPTION_KEYS")

    with pytest.raises(ValidationError, match="MBL_ENCRYPTION_KEYS"):
        Settings()
