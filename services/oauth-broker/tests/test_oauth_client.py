"""The real OAuthClient adapter against the local authorization server (Google, Microsoft and
Yahoo as the broker sees them), built the way bootstrap builds it: discovery, then overrides.

The sign-in is walked like a browser would (consent page, then the form), and the code is taken
from the redirect's Location without following it: the redirect URI is never visited.
"""

import base64
import hashlib
import secrets
import ssl
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from pydantic import SecretStr

from localinfra import LocalOAuthServer, LocalStack
from localinfra.oauth_server import consent_form
from mailbox_link_contract.events import ProviderType
from mailbox_link_contract.failures import FailureCode
from mailbox_link_shared.settings import tls_context
from oauth_broker.adapters.discovery import apply_discovery, apply_overrides, fetch_discovery
from oauth_broker.adapters.oauth_client import OAuthApp, OAuthClient, TokenResponse
from oauth_broker.domain.outcomes import AuthorizationFailed, ProviderRefused, ProviderUnreachable
from oauth_broker.domain.providers import DEFAULT_ENDPOINTS, TokenAuthMethod
from oauth_broker.domain.sessions import SessionSecrets

REDIRECT_URI = "https://cb.test/callback"  # registered, never visited
TIMEOUT = 10.0
# Not in the discovery documents: where the broker reads which mailbox signed in.
PROFILE_PATHS = {
    ProviderType.GOOGLE: "google/gmail/v1/users/me/profile",
    ProviderType.MICROSOFT: "microsoft/graph/v1.0/me",
}
DOMAINS = {
    ProviderType.GOOGLE: "gmail.com",
    ProviderType.MICROSOFT: "outlook.com",
    ProviderType.YAHOO: "yahoo.com",
}
GMAIL_SCOPE = "https://mail.google.com/"
OUTLOOK_IMAP = "https://outlook.office.com/IMAP.AccessAsUser.All"


@pytest.fixture(scope="module")
def oauth(local_stack: LocalStack) -> LocalOAuthServer:
    return local_stack.oauth_server


@pytest.fixture(scope="module")
def tls(local_stack: LocalStack) -> ssl.SSLContext:
    return tls_context(local_stack.endpoints.ca_file)


@pytest.fixture(scope="module")
async def clients(
    oauth: LocalOAuthServer, tls: ssl.SSLContext
) -> AsyncIterator[dict[ProviderType, OAuthClient]]:
    """One client per provider, registered at the server under a fresh app id."""
    client_id, client_secret = f"adapter-{secrets.token_hex(4)}", secrets.token_urlsafe(32)
    oauth.register_client(client_id, client_secret, [REDIRECT_URI])
    built: dict[ProviderType, OAuthClient] = {}
    for provider in DOMAINS:
        discovery_url = f"{oauth.issuer(provider.value)}/.well-known/openid-configuration"
        document = await fetch_discovery(discovery_url, tls, TIMEOUT)
        endpoints = apply_discovery(DEFAULT_ENDPOINTS[provider], document)
        profile_url = (
            f"{oauth.base_url}/{PROFILE_PATHS[provider]}" if provider in PROFILE_PATHS else None
        )
        endpoints = apply_overrides(endpoints, {"profile_url": profile_url})
        app = OAuthApp(provider, client_id, SecretStr(client_secret), REDIRECT_URI, endpoints)
        built[provider] = OAuthClient(app, tls, TIMEOUT)
    yield built
    for client in built.values():
        await client.aclose()


@pytest.fixture
async def browser(tls: ssl.SSLContext) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(verify=tls, timeout=TIMEOUT) as client:
        yield client


def new_account(oauth: LocalOAuthServer, provider: ProviderType, **modes: bool) -> str:
    address = f"adapter-{secrets.token_hex(4)}@{DOMAINS[provider]}"
    oauth.add_user(provider.value, address, **modes)
    return address


async def sign_in(
    browser: httpx.AsyncClient,
    client: OAuthClient,
    address: str,
    uncheck: tuple[str, ...] = (),
) -> tuple[SessionSecrets, str]:
    """Signs in as `address` with every offered scope but `uncheck`; returns the session's
    secrets and the code from the redirect."""
    fresh = SessionSecrets.generate().started("state-1")
    url = client.authorize_url(fresh, login_hint=address)
    page = await browser.get(url)
    assert page.status_code == 200, page.text
    answer = await browser.post(url, data=consent_form(page.text, address, uncheck=uncheck))
    assert answer.status_code in (302, 303), answer.text
    location = answer.headers["location"]
    assert location.startswith(f"{REDIRECT_URI}?"), location
    query = parse_qs(urlsplit(location).query)
    assert query["state"] == [fresh.state]
    return fresh, query["code"][0]


async def signed_in_tokens(
    browser: httpx.AsyncClient, client: OAuthClient, address: str
) -> tuple[SessionSecrets, TokenResponse]:
    fresh, code = await sign_in(browser, client, address)
    return fresh, await client.exchange_code(code, fresh.code_verifier, now())


def now() -> datetime:
    return datetime.now(UTC)


def s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


# --- the sign-in URL ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "extra"),
    [
        (ProviderType.GOOGLE, {"access_type": "offline", "prompt": "consent"}),
        (ProviderType.MICROSOFT, {"prompt": "select_account"}),
        (ProviderType.YAHOO, {"prompt": "login"}),
    ],
)
async def test_authorize_url_binds_the_session(
    clients: dict[ProviderType, OAuthClient],
    oauth: LocalOAuthServer,
    browser: httpx.AsyncClient,
    provider: ProviderType,
    extra: dict[str, str],
) -> None:
    client = clients[provider]
    fresh = SessionSecrets.generate().started("state-1")

    url = client.authorize_url(fresh, login_hint="someone@example.com")

    assert url.startswith(f"{oauth.issuer(provider.value)}/authorize?")
    query = {key: values[0] for key, values in parse_qs(urlsplit(url).query).items()}
    assert query["response_type"] == "code"
    assert query["client_id"] == client.app.client_id
    assert query["redirect_uri"] == REDIRECT_URI
    assert query["state"] == fresh.state
    assert query["code_challenge"] == s256(fresh.code_verifier)
    assert query["code_challenge_method"] == "S256"
    assert "code_verifier" not in query
    assert query["nonce"] == fresh.nonce
    assert query["login_hint"] == "someone@example.com"
    assert query["scope"].split() == list(client.app.endpoints.scopes)
    assert {key: query[key] for key in extra} == extra
    # The server accepts the request (it shows its consent page) and saw the same parameters.
    page = await browser.get(url)
    assert page.status_code == 200, page.text
    assert oauth.last_authorize_params(fresh.state) == query


# --- code exchange and the id token ------------------------------------------------------------


async def test_google_exchange_and_id_token(
    clients: dict[ProviderType, OAuthClient],
    oauth: LocalOAuthServer,
    browser: httpx.AsyncClient,
    tls: ssl.SSLContext,
) -> None:
    client = clients[ProviderType.GOOGLE]
    address = new_account(oauth, ProviderType.GOOGLE)

    fresh, tokens = await signed_in_tokens(browser, client, address)

    assert tokens.access_token
    assert tokens.refresh_token
    assert tokens.id_token
    assert GMAIL_SCOPE in tokens.scopes
    assert tokens.expires_at > now()
    assert tokens.access_token not in repr(tokens)
    claims = await client.check_id_token(tokens.id_token, fresh.nonce)
    assert claims["email"] == address
    assert claims["aud"] == client.app.client_id
    assert claims["iss"] == oauth.issuer("google")
    with pytest.raises(AuthorizationFailed) as wrong_nonce:
        await client.check_id_token(
            tokens.id_token, SessionSecrets.generate().started("state-1").nonce
        )
    assert wrong_nonce.value.code is FailureCode.PROVIDER_ERROR
    # An id token meant for another app (or from another issuer) does not check out either.
    other = OAuthClient(
        OAuthApp(
            ProviderType.GOOGLE, "another-app", SecretStr("x"), REDIRECT_URI, client.app.endpoints
        ),
        tls,
        TIMEOUT,
    )
    with pytest.raises(AuthorizationFailed) as wrong_audience:
        await other.check_id_token(tokens.id_token, fresh.nonce)
    assert wrong_audience.value.code is FailureCode.PROVIDER_ERROR
    await other.aclose()

    mailbox = await client.signed_in_mailbox(tokens, now())

    assert mailbox.addresses == (address, address)  # the Gmail profile, then userinfo
    assert mailbox.rotated_refresh_token is None


async def test_unchecked_mail_scope_is_not_reported_granted(
    clients: dict[ProviderType, OAuthClient], oauth: LocalOAuthServer, browser: httpx.AsyncClient
) -> None:
    client = clients[ProviderType.GOOGLE]
    address = new_account(oauth, ProviderType.GOOGLE)

    fresh, code = await sign_in(browser, client, address, uncheck=(GMAIL_SCOPE,))
    tokens = await client.exchange_code(code, fresh.code_verifier, now())

    assert GMAIL_SCOPE not in tokens.scopes
    assert "openid" in tokens.scopes


@pytest.mark.parametrize("provider", [ProviderType.GOOGLE, ProviderType.YAHOO])
async def test_refresh_covers_what_was_granted(
    clients: dict[ProviderType, OAuthClient],
    oauth: LocalOAuthServer,
    browser: httpx.AsyncClient,
    provider: ProviderType,
) -> None:
    # The user unchecked a scope the broker does not need: the sign-in may still verify the
    # mailbox, and its refreshes must not ask for more than was granted (invalid_scope).
    client = clients[provider]
    address = new_account(oauth, provider)
    fresh, code = await sign_in(browser, client, address, uncheck=("email",))
    tokens = await client.exchange_code(code, fresh.code_verifier, now())
    assert "email" not in tokens.scopes
    assert tokens.refresh_token
    assert address in (await client.signed_in_mailbox(tokens, now())).addresses

    renewed = await client.refresh(tokens.refresh_token, now())

    assert renewed.access_token != tokens.access_token
    assert set(client.app.endpoints.mail_scopes) <= renewed.scopes


async def test_a_code_works_once_and_only_with_its_verifier(
    clients: dict[ProviderType, OAuthClient], oauth: LocalOAuthServer, browser: httpx.AsyncClient
) -> None:
    client = clients[ProviderType.YAHOO]
    address = new_account(oauth, ProviderType.YAHOO)
    _, code = await sign_in(browser, client, address)

    with pytest.raises(ProviderRefused) as wrong_verifier:
        await client.exchange_code(
            code, SessionSecrets.generate().started("state-1").code_verifier, now()
        )
    assert wrong_verifier.value.error == "invalid_grant"
    fresh_again, code = await sign_in(browser, client, address)
    await client.exchange_code(code, fresh_again.code_verifier, now())
    with pytest.raises(ProviderRefused) as replayed:
        await client.exchange_code(code, fresh_again.code_verifier, now())
    assert replayed.value.error == "invalid_grant"


# --- which mailbox signed in -------------------------------------------------------------------


async def test_gmail_turned_off_is_gmail_disabled(
    clients: dict[ProviderType, OAuthClient], oauth: LocalOAuthServer, browser: httpx.AsyncClient
) -> None:
    client = clients[ProviderType.GOOGLE]
    address = new_account(oauth, ProviderType.GOOGLE, gmail_disabled=True)
    _, tokens = await signed_in_tokens(browser, client, address)

    with pytest.raises(AuthorizationFailed) as failed:
        await client.signed_in_mailbox(tokens, now())

    assert failed.value.code is FailureCode.GMAIL_DISABLED
    assert address in failed.value.detail


async def test_microsoft_reads_graph_with_a_rotated_refresh_token(
    clients: dict[ProviderType, OAuthClient], oauth: LocalOAuthServer, browser: httpx.AsyncClient
) -> None:
    client = clients[ProviderType.MICROSOFT]
    address = new_account(oauth, ProviderType.MICROSOFT)
    fresh, tokens = await signed_in_tokens(browser, client, address)
    assert tokens.refresh_token
    assert tokens.id_token
    assert OUTLOOK_IMAP in tokens.scopes
    # Microsoft's issuer names the user's tenant: only signature, audience and nonce count.
    assert client.app.endpoints.issuer is None
    assert (await client.check_id_token(tokens.id_token, fresh.nonce))["email"] == address
    with pytest.raises(AuthorizationFailed):
        await client.check_id_token(tokens.id_token, "not-the-nonce")

    mailbox = await client.signed_in_mailbox(tokens, now())

    assert mailbox.addresses == (address, address)  # mail, userPrincipalName
    rotated = mailbox.rotated_refresh_token
    assert rotated is not None
    assert rotated != tokens.refresh_token
    assert oauth.was_revoked(tokens.refresh_token)
    # The rotated token still covers the mail scopes: the grant keeps refreshing with it.
    renewed = await client.refresh(rotated, now())
    assert renewed.access_token
    assert OUTLOOK_IMAP in renewed.scopes
    assert renewed.refresh_token is not None
    assert renewed.refresh_token != rotated
    assert await client.refresh(renewed.refresh_token, now())


async def test_yahoo_reads_userinfo(
    clients: dict[ProviderType, OAuthClient], oauth: LocalOAuthServer, browser: httpx.AsyncClient
) -> None:
    client = clients[ProviderType.YAHOO]
    address = new_account(oauth, ProviderType.YAHOO)
    fresh, tokens = await signed_in_tokens(browser, client, address)
    assert tokens.id_token
    assert "mail-w" in tokens.scopes
    await client.check_id_token(tokens.id_token, fresh.nonce)

    mailbox = await client.signed_in_mailbox(tokens, now())

    assert mailbox.addresses == (address,)
    assert mailbox.rotated_refresh_token is None


# --- refresh and revocation --------------------------------------------------------------------


@pytest.mark.parametrize("provider", [ProviderType.GOOGLE, ProviderType.YAHOO])
async def test_refresh_after_the_grant_is_revoked_is_final(
    clients: dict[ProviderType, OAuthClient],
    oauth: LocalOAuthServer,
    browser: httpx.AsyncClient,
    provider: ProviderType,
) -> None:
    client = clients[provider]
    address = new_account(oauth, provider)
    _, tokens = await signed_in_tokens(browser, client, address)
    assert tokens.refresh_token
    renewed = await client.refresh(tokens.refresh_token, now())
    assert renewed.access_token != tokens.access_token
    still_valid = renewed.refresh_token or tokens.refresh_token  # Google keeps, Yahoo rotates

    oauth.revoke_refresh_tokens(provider.value, address)

    with pytest.raises(ProviderRefused) as refused:
        await client.refresh(still_valid, now())
    assert refused.value.error == "invalid_grant"
    assert refused.value.is_final


async def test_google_revocation(
    clients: dict[ProviderType, OAuthClient], oauth: LocalOAuthServer, browser: httpx.AsyncClient
) -> None:
    client = clients[ProviderType.GOOGLE]
    address = new_account(oauth, ProviderType.GOOGLE)
    _, tokens = await signed_in_tokens(browser, client, address)
    assert tokens.refresh_token

    assert await client.revoke(tokens.refresh_token) is True

    assert oauth.was_revoked(tokens.refresh_token)
    assert oauth.was_revoked(tokens.access_token)  # Google revokes the whole grant
    with pytest.raises(ProviderRefused) as refused:
        await client.refresh(tokens.refresh_token, now())
    assert refused.value.is_final


async def test_microsoft_offers_no_revocation(
    clients: dict[ProviderType, OAuthClient], oauth: LocalOAuthServer, browser: httpx.AsyncClient
) -> None:
    client = clients[ProviderType.MICROSOFT]
    address = new_account(oauth, ProviderType.MICROSOFT)
    _, tokens = await signed_in_tokens(browser, client, address)
    assert tokens.refresh_token

    assert await client.revoke(tokens.refresh_token) is False

    assert not oauth.was_revoked(tokens.refresh_token)


# --- client authentication at the token and revocation endpoints (RFC 6749 2.3.1) ------------

# What broke with authlib's client: a '+' and a '%' in the secret, a ':' in the client id.
AWKWARD_ID = "mailbox-link:adapter"
AWKWARD_SECRET = "s3cr+t%2F/with:colon=and space"


def awkward_app(
    clients: dict[ProviderType, OAuthClient], oauth: LocalOAuthServer, **endpoints: object
) -> OAuthApp:
    """Google's app of `clients`, registered under an awkward id and secret."""
    client_id = f"{AWKWARD_ID}-{secrets.token_hex(4)}"
    secret = f"{AWKWARD_SECRET}-{secrets.token_hex(4)}"
    oauth.register_client(client_id, secret, [REDIRECT_URI])
    google = clients[ProviderType.GOOGLE].app
    return replace(
        google,
        client_id=client_id,
        client_secret=SecretStr(secret),
        endpoints=replace(google.endpoints, **endpoints),  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("configured", "discovered", "used"),
    [
        (None, (), "client_secret_basic"),  # discovery silent: RFC 8414's default
        (TokenAuthMethod.POST, ("client_secret_basic",), "client_secret_post"),
        (TokenAuthMethod.BASIC, ("client_secret_post",), "client_secret_basic"),
        (None, ("private_key_jwt", "client_secret_post", "client_secret_basic"),
         "client_secret_post"),
    ],
)  # fmt: skip
async def test_an_awkward_client_secret_works_with_either_method(
    clients: dict[ProviderType, OAuthClient],
    oauth: LocalOAuthServer,
    browser: httpx.AsyncClient,
    tls: ssl.SSLContext,
    configured: TokenAuthMethod | None,
    discovered: tuple[str, ...],
    used: str,
) -> None:
    app = awkward_app(
        clients, oauth, token_auth_method=configured, token_auth_methods_supported=discovered
    )
    client = OAuthClient(app, tls, TIMEOUT)
    address = new_account(oauth, ProviderType.GOOGLE)
    before = len(oauth.client_auth_methods)

    fresh, code = await sign_in(browser, client, address)
    tokens = await client.exchange_code(code, fresh.code_verifier, now())
    assert tokens.refresh_token
    renewed = await client.refresh(tokens.refresh_token, now())
    assert renewed.access_token != tokens.access_token
    assert await client.revoke(tokens.refresh_token) is True
    await client.aclose()

    assert oauth.was_revoked(tokens.refresh_token)
    # The exchange, the refresh and the revocation each authenticated our app this way.
    assert oauth.client_auth_methods[before:] == [used] * 3


async def test_the_local_server_refuses_an_id_and_secret_sent_without_form_encoding(
    clients: dict[ProviderType, OAuthClient], oauth: LocalOAuthServer, tls: ssl.SSLContext
) -> None:
    # What authlib's client sent: the proof that the server above checks the encoding.
    app = awkward_app(clients, oauth)
    raw = f"{app.client_id}:{app.client_secret.get_secret_value()}".encode()
    async with httpx.AsyncClient(verify=tls, timeout=TIMEOUT) as http:
        answer = await http.post(
            app.endpoints.token_url,
            data={"grant_type": "refresh_token", "refresh_token": "any"},
            headers={"Authorization": f"Basic {base64.b64encode(raw).decode()}"},
        )
    assert answer.status_code == 401
    assert answer.json()["error"] == "invalid_client"


async def test_a_wrong_client_secret_is_invalid_client_and_not_final(
    clients: dict[ProviderType, OAuthClient],
    oauth: LocalOAuthServer,
    browser: httpx.AsyncClient,
    tls: ssl.SSLContext,
) -> None:
    app = awkward_app(clients, oauth)
    client = OAuthClient(app, tls, TIMEOUT)
    _, tokens = await signed_in_tokens(browser, client, new_account(oauth, ProviderType.GOOGLE))
    assert tokens.refresh_token
    rotated = OAuthClient(replace(app, client_secret=SecretStr("rotated")), tls, TIMEOUT)

    with pytest.raises(ProviderRefused) as refused:
        await rotated.refresh(tokens.refresh_token, now())

    assert (refused.value.error, refused.value.status) == ("invalid_client", 401)
    assert not refused.value.is_final  # the user's grant is fine: it is our app
    assert await client.refresh(tokens.refresh_token, now())
    await client.aclose()
    await rotated.aclose()


@pytest.mark.parametrize(("status", "error"), [(503, "temporarily_unavailable"), (502, "")])
async def test_a_token_endpoint_outage_is_not_final(
    clients: dict[ProviderType, OAuthClient],
    oauth: LocalOAuthServer,
    browser: httpx.AsyncClient,
    status: int,
    error: str,
) -> None:
    client = clients[ProviderType.YAHOO]
    _, tokens = await signed_in_tokens(browser, client, new_account(oauth, ProviderType.YAHOO))
    assert tokens.refresh_token
    oauth.token_outage("yahoo", status, error)
    try:
        with pytest.raises((ProviderRefused, ProviderUnreachable)) as failed:
            await client.refresh(tokens.refresh_token, now())
    finally:
        oauth.end_token_outage("yahoo")
    assert str(status) in str(failed.value) or getattr(failed.value, "status", 0) == status
    assert not (isinstance(failed.value, ProviderRefused) and failed.value.is_final)
    assert await client.refresh(tokens.refresh_token, now())


# --- provider trouble --------------------------------------------------------------------------


async def test_a_token_endpoint_failure_is_worth_retrying(
    clients: dict[ProviderType, OAuthClient], oauth: LocalOAuthServer, browser: httpx.AsyncClient
) -> None:
    client = clients[ProviderType.GOOGLE]
    address = new_account(oauth, ProviderType.GOOGLE, token_error=True)
    fresh, code = await sign_in(browser, client, address)

    with pytest.raises((ProviderUnreachable, ProviderRefused)) as failed:
        await client.exchange_code(code, fresh.code_verifier, now())

    error = failed.value
    assert not (isinstance(error, ProviderRefused) and error.is_final), error
    assert "server_error" in str(error) or "500" in str(error)


async def test_an_unreachable_provider_is_provider_unreachable(
    clients: dict[ProviderType, OAuthClient], tls: ssl.SSLContext
) -> None:
    client = clients[ProviderType.YAHOO]
    closed = "https://127.0.0.1:9/token"  # discard port: nothing listens
    endpoints = replace(client.app.endpoints, token_url=closed, userinfo_url=closed)
    offline = OAuthClient(replace(client.app, endpoints=endpoints), tls, 2.0)

    with pytest.raises(ProviderUnreachable):
        await offline.refresh("some-refresh-token", now())
    with pytest.raises(ProviderUnreachable):
        await offline.signed_in_mailbox(
            TokenResponse("access", None, now(), frozenset(), None), now()
        )
    await offline.aclose()
