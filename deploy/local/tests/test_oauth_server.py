"""The local OAuth server: sign-in at Google, Microsoft, Yahoo and AOL as the OAuth broker will
drive it (consent page, PKCE code exchange, refresh, revocation), and its tokens at the profile
APIs and at the OAuth Dovecot."""

from __future__ import annotations

import imaplib
import secrets
import ssl
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from joserfc import jwt
from joserfc.jwk import KeySet

from localinfra import LocalOAuthServer, LocalStack

CLIENT_ID, CLIENT_SECRET = "broker-tests", "broker-secret"
REDIRECT_URI = "http://127.0.0.1:9/oauth/callback"
PROVIDERS = ["google", "microsoft", "yahoo", "aol"]
DOMAINS = {
    "google": "gmail.com",
    "microsoft": "outlook.com",
    "yahoo": "yahoo.com",
    "aol": "aol.com",
}
MAIL_SCOPES = {
    "google": "https://mail.google.com/",
    "microsoft": "https://outlook.office.com/IMAP.AccessAsUser.All",
    "yahoo": "mail-w",
    "aol": "mail-w",
}
GMAIL_PROFILE = "/google/gmail/v1/users/me/profile"


@dataclass(frozen=True)
class Authorization:
    """One authorize request as the broker sends it, with the secrets it keeps."""

    provider: str
    url: str
    state: str
    nonce: str
    verifier: str


@pytest.fixture(scope="module")
def server(local_stack: LocalStack) -> LocalOAuthServer:
    oauth = local_stack.oauth_server
    oauth.register_client(CLIENT_ID, CLIENT_SECRET, [REDIRECT_URI])
    return oauth


@pytest.fixture(scope="module")
def http(local_stack: LocalStack) -> Iterator[httpx.Client]:
    context = ssl.create_default_context(cafile=local_stack.endpoints.ca_file)
    with httpx.Client(verify=context, timeout=10) as client:
        yield client


def _new_user(server: LocalOAuthServer, provider: str, **flags: bool) -> str:
    email = f"user-{secrets.token_hex(4)}@{DOMAINS[provider]}"
    server.add_user(provider, email, **flags)
    return email


def _authorization(
    server: LocalOAuthServer, provider: str, email: str, **overrides: str
) -> Authorization:
    state, nonce, verifier = (secrets.token_urlsafe(16) for _ in range(3))
    verifier += secrets.token_urlsafe(32)  # PKCE wants 43 to 128 characters
    query = {
        "response_type": "code",
        "client_id": CLIENT_ID,
        "redirect_uri": REDIRECT_URI,
        "scope": f"openid email {MAIL_SCOPES[provider]}",
        "state": state,
        "nonce": nonce,
        "login_hint": email,
        "prompt": "consent",
        "code_challenge": create_s256_code_challenge(verifier),
        "code_challenge_method": "S256",
        **overrides,
    }
    url = f"{server.issuer(provider)}/authorize?{urllib.parse.urlencode(query)}"
    return Authorization(provider, url, state, nonce, verifier)


def _consent(
    http: httpx.Client,
    auth: Authorization,
    account: str,
    decision: str = "allow",
    scopes: list[str] | None = None,
) -> httpx.Response:
    """Shows the consent page, then submits it as a user would (all scopes checked unless
    `scopes` says otherwise)."""
    page = http.get(auth.url)
    assert page.status_code == 200, page.text
    requested = urllib.parse.parse_qs(urllib.parse.urlsplit(auth.url).query)["scope"][0].split()
    form = {
        "account": account,
        "decision": decision,
        "scope": requested if scopes is None else scopes,
    }
    return http.post(auth.url, data=form)


def _redirect_params(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 302, response.text
    location = response.headers["location"]
    assert location.startswith(REDIRECT_URI)
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))


def _code(response: httpx.Response, auth: Authorization) -> str:
    params = _redirect_params(response)
    assert params["state"] == auth.state
    return params["code"]


def _exchange(
    http: httpx.Client, server: LocalOAuthServer, auth: Authorization, code: str, **form: str
) -> httpx.Response:
    data = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT_URI,
        "code_verifier": auth.verifier,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        **form,
    }
    return http.post(f"{server.issuer(auth.provider)}/token", data=data)


def _sign_in(
    http: httpx.Client, server: LocalOAuthServer, provider: str, email: str
) -> dict[str, Any]:
    auth = _authorization(server, provider, email)
    answer = _exchange(http, server, auth, _code(_consent(http, auth, email), auth))
    assert answer.status_code == 200, answer.text
    token: dict[str, Any] = answer.json()
    return token


def _refresh(
    http: httpx.Client, server: LocalOAuthServer, provider: str, refresh_token: str
) -> httpx.Response:
    return http.post(
        f"{server.issuer(provider)}/token",
        data={"grant_type": "refresh_token", "refresh_token": refresh_token},
        auth=(CLIENT_ID, CLIENT_SECRET),  # client_secret_basic
    )


def _get(http: httpx.Client, url: str, access_token: str) -> httpx.Response:
    return http.get(url, headers={"Authorization": f"Bearer {access_token}"})


def _imap_accepts(stack: LocalStack, user: str, token: str) -> bool:
    e = stack.endpoints
    answers = iter([f"user={user}\x01auth=Bearer {token}\x01\x01".encode(), b""])
    context = ssl.create_default_context(cafile=e.ca_file)
    with imaplib.IMAP4_SSL(
        e.mail_host, e.oauth_imaps_port, ssl_context=context, timeout=10
    ) as imap:
        try:
            imap.authenticate("XOAUTH2", lambda _challenge: next(answers))
        except imaplib.IMAP4.error:
            return False
        return True


def test_discovery_documents_point_at_each_providers_endpoints(
    server: LocalOAuthServer, http: httpx.Client
) -> None:
    for provider in PROVIDERS:
        issuer = server.issuer(provider)
        document = http.get(f"{issuer}/.well-known/openid-configuration").json()
        assert document["issuer"] == issuer == f"{server.base_url}/{provider}"
        assert document["authorization_endpoint"] == f"{issuer}/authorize"
        assert document["token_endpoint"] == f"{issuer}/token"
        assert document["userinfo_endpoint"] == f"{issuer}/userinfo"
        assert document["jwks_uri"] == f"{issuer}/jwks"
        assert document["code_challenge_methods_supported"] == ["S256"]
        assert MAIL_SCOPES[provider] in document["scopes_supported"]
        assert ("revocation_endpoint" in document) == (provider == "google")


def test_stack_publishes_the_oauth_server_url(local_stack: LocalStack) -> None:
    assert local_stack.endpoints.oauth_server_url == local_stack.oauth_server.base_url
    assert local_stack.endpoints.oauth_server_url.startswith("https://localhost:")


@pytest.mark.parametrize("provider", PROVIDERS)
def test_sign_in_with_pkce_gives_tokens_and_userinfo(
    server: LocalOAuthServer, http: httpx.Client, provider: str
) -> None:
    email = _new_user(server, provider)
    auth = _authorization(server, provider, email)
    page = http.get(auth.url).text
    assert f'name="account" value="{email}"' in page
    assert f'name="scope" value="{MAIL_SCOPES[provider]}" checked' in page
    code = _code(_consent(http, auth, email), auth)

    answer = _exchange(http, server, auth, code)

    assert answer.status_code == 200, answer.text
    token = answer.json()
    assert token["token_type"] == "Bearer"
    assert token["expires_in"] == 3600
    assert token["scope"] == f"openid email {MAIL_SCOPES[provider]}"
    assert token["refresh_token"]
    assert token["id_token"]
    userinfo = _get(http, f"{server.issuer(provider)}/userinfo", token["access_token"]).json()
    assert userinfo["email"] == email
    assert userinfo["email_verified"] is True
    assert userinfo["sub"]
    assert userinfo["name"]


def test_authorize_parameters_are_recorded_by_state(
    server: LocalOAuthServer, http: httpx.Client
) -> None:
    email = _new_user(server, "microsoft")
    auth = _authorization(server, "microsoft", email, prompt="select_account")
    http.get(auth.url)
    params = server.last_authorize_params(auth.state)
    assert params["prompt"] == "select_account"
    assert params["login_hint"] == email
    assert params["nonce"] == auth.nonce
    assert params["code_challenge_method"] == "S256"


def test_id_token_is_signed_with_the_published_key_and_carries_the_nonce(
    server: LocalOAuthServer, http: httpx.Client
) -> None:
    email = _new_user(server, "yahoo")
    auth = _authorization(server, "yahoo", email)
    token = _exchange(http, server, auth, _code(_consent(http, auth, email), auth)).json()
    keys = KeySet.import_key_set(http.get(f"{server.issuer('yahoo')}/jwks").json())

    claims = jwt.decode(token["id_token"], keys, algorithms=["RS256"]).claims

    assert claims["iss"] == server.issuer("yahoo")
    assert claims["aud"] == CLIENT_ID
    assert claims["nonce"] == auth.nonce
    assert claims["email"] == email
    assert claims["email_verified"] is True
    assert claims["sub"]
    assert claims["iat"] <= time.time() < claims["exp"]


def test_code_exchange_accepts_client_secret_basic_and_refuses_a_wrong_secret(
    server: LocalOAuthServer, http: httpx.Client
) -> None:
    email = _new_user(server, "aol")
    auth = _authorization(server, "aol", email)
    code = _code(_consent(http, auth, email), auth)
    token_url = f"{server.issuer('aol')}/token"
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT_URI,
        "code_verifier": auth.verifier,
    }

    wrong = http.post(token_url, data=form, auth=(CLIENT_ID, "not-the-secret"))
    right = http.post(token_url, data=form, auth=(CLIENT_ID, CLIENT_SECRET))

    assert wrong.status_code == 401
    assert wrong.json()["error"] == "invalid_client"
    assert right.status_code == 200, right.text


def test_a_wrong_code_verifier_is_refused(server: LocalOAuthServer, http: httpx.Client) -> None:
    email = _new_user(server, "google")
    auth = _authorization(server, "google", email)
    code = _code(_consent(http, auth, email), auth)

    answer = _exchange(http, server, auth, code, code_verifier=secrets.token_urlsafe(48))

    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid_grant"


def test_a_code_works_only_once(server: LocalOAuthServer, http: httpx.Client) -> None:
    email = _new_user(server, "google")
    auth = _authorization(server, "google", email)
    code = _code(_consent(http, auth, email), auth)
    assert _exchange(http, server, auth, code).status_code == 200
    assert _exchange(http, server, auth, code).json()["error"] == "invalid_grant"


@pytest.mark.parametrize(
    "pkce",
    [{"code_challenge": "", "code_challenge_method": ""}, {"code_challenge_method": "plain"}],
)
def test_authorize_without_s256_pkce_redirects_with_invalid_request(
    server: LocalOAuthServer, http: httpx.Client, pkce: dict[str, str]
) -> None:
    auth = _authorization(server, "google", _new_user(server, "google"), **pkce)
    params = _redirect_params(http.get(auth.url))
    assert params["error"] == "invalid_request"
    assert params["state"] == auth.state


def test_denying_consent_redirects_with_access_denied(
    server: LocalOAuthServer, http: httpx.Client
) -> None:
    email = _new_user(server, "microsoft")
    auth = _authorization(server, "microsoft", email)
    params = _redirect_params(_consent(http, auth, email, decision="deny"))
    assert params["error"] == "access_denied"
    assert params["error_description"]
    assert params["state"] == auth.state


def test_an_unknown_account_cannot_sign_in(server: LocalOAuthServer, http: httpx.Client) -> None:
    auth = _authorization(server, "google", "nobody@gmail.com")
    answer = _consent(http, auth, "nobody@gmail.com")
    assert answer.status_code == 400
    assert "no such account" in answer.text


def test_gmail_profile_names_the_mailbox(server: LocalOAuthServer, http: httpx.Client) -> None:
    email = _new_user(server, "google")
    token = _sign_in(http, server, "google", email)
    answer = _get(http, server.base_url + GMAIL_PROFILE, token["access_token"])
    assert answer.status_code == 200
    assert answer.json() == {
        "emailAddress": email,
        "messagesTotal": 0,
        "threadsTotal": 0,
        "historyId": "1",
    }


def test_gmail_profile_of_an_account_without_gmail_is_a_failed_precondition(
    server: LocalOAuthServer, http: httpx.Client
) -> None:
    token = _sign_in(http, server, "google", _new_user(server, "google", gmail_disabled=True))
    answer = _get(http, server.base_url + GMAIL_PROFILE, token["access_token"])
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["message"] == "Mail service not enabled"
    assert error["errors"][0]["reason"] == "failedPrecondition"
    assert error["status"] == "FAILED_PRECONDITION"


def test_unchecking_the_mail_scope_gives_a_token_without_it(
    server: LocalOAuthServer, http: httpx.Client
) -> None:
    email = _new_user(server, "google")
    auth = _authorization(server, "google", email)
    code = _code(_consent(http, auth, email, scopes=["openid", "email"]), auth)

    token = _exchange(http, server, auth, code).json()
    profile = _get(http, server.base_url + GMAIL_PROFILE, token["access_token"])

    assert token["scope"] == "openid email"
    assert profile.status_code == 403
    assert profile.json()["error"]["errors"][0]["reason"] == "insufficientPermissions"


def test_microsoft_graph_me_names_the_mailbox(server: LocalOAuthServer, http: httpx.Client) -> None:
    email = _new_user(server, "microsoft")
    token = _sign_in(http, server, "microsoft", email)
    me = _get(http, f"{server.base_url}/microsoft/graph/v1.0/me", token["access_token"]).json()
    assert me["userPrincipalName"] == me["mail"] == email
    assert me["id"]
    assert me["displayName"]


def test_an_account_can_sign_in_without_getting_a_refresh_token(
    server: LocalOAuthServer, http: httpx.Client
) -> None:
    token = _sign_in(http, server, "yahoo", _new_user(server, "yahoo", no_refresh_token=True))
    assert "refresh_token" not in token
    assert token["access_token"]


def test_code_exchange_fails_with_server_error_for_a_token_error_account(
    server: LocalOAuthServer, http: httpx.Client
) -> None:
    email = _new_user(server, "microsoft", token_error=True)
    auth = _authorization(server, "microsoft", email)
    answer = _exchange(http, server, auth, _code(_consent(http, auth, email), auth))
    assert answer.status_code == 500
    assert answer.json() == {"error": "server_error"}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_refresh_keeps_googles_refresh_token_and_rotates_the_others(
    server: LocalOAuthServer, http: httpx.Client, provider: str
) -> None:
    token = _sign_in(http, server, provider, _new_user(server, provider))
    requests_before = len(server.token_requests)

    refreshed = _refresh(http, server, provider, token["refresh_token"]).json()

    assert server.token_requests[requests_before:] == [(provider, "refresh_token")]
    assert refreshed["access_token"] != token["access_token"]
    assert refreshed["scope"] == token["scope"]
    again = _refresh(http, server, provider, token["refresh_token"])
    if provider == "google":
        assert "refresh_token" not in refreshed
        assert again.status_code == 200
    else:
        assert refreshed["refresh_token"] != token["refresh_token"]
        assert again.json() == {"error": "invalid_grant"}
        assert _refresh(http, server, provider, refreshed["refresh_token"]).status_code == 200


def test_refresh_fails_with_invalid_grant_once_refresh_tokens_are_revoked(
    server: LocalOAuthServer, http: httpx.Client
) -> None:
    email = _new_user(server, "google")
    token = _sign_in(http, server, "google", email)
    assert _refresh(http, server, "google", token["refresh_token"]).status_code == 200

    server.revoke_refresh_tokens("google", email)
    answer = _refresh(http, server, "google", token["refresh_token"])

    assert answer.status_code == 400
    assert answer.json() == {"error": "invalid_grant"}


def test_google_revoke_revokes_the_whole_grant(
    local_stack: LocalStack, server: LocalOAuthServer, http: httpx.Client
) -> None:
    email = _new_user(server, "google")
    token = _sign_in(http, server, "google", email)

    answer = http.post(f"{server.issuer('google')}/revoke", data={"token": token["access_token"]})

    assert answer.status_code == 200
    assert server.was_revoked(token["access_token"])
    assert server.was_revoked(token["refresh_token"])
    assert _refresh(http, server, "google", token["refresh_token"]).status_code == 400
    userinfo = _get(http, f"{server.issuer('google')}/userinfo", token["access_token"])
    assert userinfo.status_code == 401
    assert not _imap_accepts(local_stack, email, token["access_token"])


def test_an_expired_access_token_is_refused(server: LocalOAuthServer, http: httpx.Client) -> None:
    server.access_token_lifetime = 1
    try:
        token = _sign_in(http, server, "aol", _new_user(server, "aol"))
    finally:
        server.access_token_lifetime = 3600
    assert token["expires_in"] == 1
    time.sleep(1.1)
    assert _get(http, f"{server.issuer('aol')}/userinfo", token["access_token"]).status_code == 401


def test_a_token_is_good_only_at_the_provider_that_issued_it(
    server: LocalOAuthServer, http: httpx.Client
) -> None:
    token = _sign_in(http, server, "yahoo", _new_user(server, "yahoo"))
    assert _get(http, f"{server.issuer('aol')}/userinfo", token["access_token"]).status_code == 401


def test_issued_tokens_log_in_over_imap_unless_imap_is_disabled(
    local_stack: LocalStack, server: LocalOAuthServer, http: httpx.Client
) -> None:
    email = _new_user(server, "microsoft")
    blocked = _new_user(server, "microsoft", imap_disabled=True)

    token = _sign_in(http, server, "microsoft", email)
    blocked_token = _sign_in(http, server, "microsoft", blocked)

    assert _imap_accepts(local_stack, email, token["access_token"])
    assert not _imap_accepts(local_stack, blocked, blocked_token["access_token"])
