"""The independent OpenID provider (panva's oidc-provider from npm) and the Dovecot that accepts
its tokens, proven alone before any service uses them: authorization code with PKCE and a client
secret with `+`, `%` and `:`, refresh tokens only for offline_access with consent, XOAUTH2
logins with its access tokens, and revoking the grant at the provider ending them."""

from __future__ import annotations

import base64
import hashlib
import secrets
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote_plus, urlencode, urlsplit

import httpx
import pytest

from localinfra.oidc_idp import OidcIdp, OidcIdpSetup, awkward_secret, sign_in
from localinfra.stack import LocalStack
from mailbox_link_contract.failures import FailureCode
from mailbox_link_contract.values import ConnectionSecurity
from mailbox_link_shared.mail_probes import (
    Endpoint,
    ProbeFailed,
    probe_imap_xoauth2,
    probe_smtp_xoauth2,
)

# Never contacted: the sign-in stops at the redirect to it, as a client's callback would.
REDIRECT_URI = "http://127.0.0.1:9/v1/oauth/callback"
SCOPES = "openid email offline_access"


@dataclass(frozen=True)
class Client:
    client_id: str
    secret: str

    def basic(self) -> str:
        """RFC 6749 §2.3.1: id and secret form-encoded, then HTTP Basic."""
        pair = f"{quote_plus(self.client_id)}:{quote_plus(self.secret)}"
        return "Basic " + base64.b64encode(pair.encode()).decode()


@dataclass(frozen=True)
class Authorization:
    url: str
    state: str
    nonce: str
    verifier: str


@pytest.fixture
def client(oidc_idp: OidcIdpSetup) -> Client:
    registered = Client(f"mailbox-link-{secrets.token_hex(4)}", awkward_secret())
    oidc_idp.idp.register_client(registered.client_id, registered.secret, [REDIRECT_URI])
    return registered


@pytest.fixture
async def browser() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=15) as opened:
        yield opened


def new_account(idp: OidcIdp) -> tuple[str, str]:
    address = f"ann-{secrets.token_hex(4)}@corp.test"
    return address, idp.add_account(address)


def authorization(idp: OidcIdp, client: Client, address: str, prompt: str) -> Authorization:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    state, nonce = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    query = {
        "client_id": client.client_id,
        "response_type": "code",
        "redirect_uri": REDIRECT_URI,
        "scope": SCOPES,
        "state": state,
        "nonce": nonce,
        "code_challenge": challenge.rstrip(b"=").decode(),
        "code_challenge_method": "S256",
        "prompt": prompt,
        "login_hint": address,
    }
    return Authorization(f"{idp.issuer}/auth?{urlencode(query)}", state, nonce, verifier)


async def signed_in(
    idp: OidcIdp,
    browser: httpx.AsyncClient,
    client: Client,
    address: str,
    prompt: str = "consent",
) -> tuple[Authorization, dict[str, str]]:
    """Walks the sign-in; returns the request and the callback's query."""
    request = authorization(idp, client, address, prompt)
    callback = await sign_in(browser, request.url, address, stop_at=REDIRECT_URI)
    query = {key: values[0] for key, values in parse_qs(urlsplit(callback).query).items()}
    return request, query


async def redeem(idp: OidcIdp, client: Client, request: Authorization, code: str) -> httpx.Response:
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT_URI,
        "code_verifier": request.verifier,
    }
    async with httpx.AsyncClient(timeout=10) as http:
        return await http.post(
            f"{idp.issuer}/token", data=form, headers={"Authorization": client.basic()}
        )


async def introspect(idp: OidcIdp, token: str) -> dict[str, Any]:
    """Asks as Dovecot does (its own client credentials)."""
    auth = (idp.introspection_client_id, idp.introspection_client_secret)
    async with httpx.AsyncClient(timeout=10) as http:
        answer = await http.post(idp.introspection_url, data={"token": token}, auth=auth)
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


def mail_endpoints(setup: OidcIdpSetup) -> tuple[Endpoint, Endpoint]:
    def endpoint(port: int) -> Endpoint:
        return Endpoint(setup.tls_hostname, setup.mail_host, port, ConnectionSecurity.SSL)

    return endpoint(setup.imaps_port), endpoint(setup.submissions_port)


async def test_a_sign_in_gives_tokens_that_open_the_mailbox_until_the_grant_is_revoked(
    oidc_idp: OidcIdpSetup, local_stack: LocalStack, client: Client, browser: httpx.AsyncClient
) -> None:
    idp = oidc_idp.idp
    address, sub = new_account(idp)
    request, callback = await signed_in(idp, browser, client, address)
    # RFC 9207: the provider names itself on the callback.
    assert (callback["state"], callback["iss"]) == (request.state, idp.issuer)

    # The secret with `+`, `%` and `:` works when form-encoded before Basic (RFC 6749 §2.3.1).
    tokens = await redeem(idp, client, request, callback["code"])
    assert tokens.status_code == 200, tokens.text
    body = tokens.json()
    assert body["refresh_token"]  # offline_access with prompt=consent (OIDC Core §11)
    assert body["id_token"]
    access_token = body["access_token"]
    introspected = await introspect(idp, access_token)
    assert (introspected["active"], introspected["email"], introspected["sub"]) == (
        True,
        address,
        sub,
    )

    # Dovecot checks the token at the provider and logs in as its `email`.
    tls = ssl.create_default_context(cafile=local_stack.endpoints.ca_file)
    imap, smtp = mail_endpoints(oidc_idp)
    await probe_imap_xoauth2(imap, address, access_token, tls, 10)
    await probe_smtp_xoauth2(smtp, address, access_token, tls, 10)
    with pytest.raises(ProbeFailed):  # the token is the address's, not another's
        await probe_imap_xoauth2(imap, f"other-{address}", access_token, tls, 10)

    # The user removes the app at the provider: every token of the grant ends with it.
    assert idp.revoke_grants(address) == 1
    assert (await introspect(idp, access_token)) == {"active": False}
    with pytest.raises(ProbeFailed) as refused:
        await probe_imap_xoauth2(imap, address, access_token, tls, 10)
    assert refused.value.code is FailureCode.IMAP_AUTH_FAILED
    async with httpx.AsyncClient(timeout=10) as http:
        refresh = await http.post(
            f"{idp.issuer}/token",
            data={"grant_type": "refresh_token", "refresh_token": body["refresh_token"]},
            headers={"Authorization": client.basic()},
        )
    assert (refresh.status_code, refresh.json()["error"]) == (400, "invalid_grant")
    [revoked] = idp.revocations(sub)
    assert (revoked.kind, revoked.via, revoked.client_id) == ("grant", "admin", client.client_id)


async def test_the_secret_sent_without_form_encoding_is_refused(
    oidc_idp: OidcIdpSetup, client: Client, browser: httpx.AsyncClient
) -> None:
    # What authlib did before issue 14: the raw secret in Basic, so `+` and `%` break it.
    idp = oidc_idp.idp
    address, _ = new_account(idp)
    request, callback = await signed_in(idp, browser, client, address)
    raw = base64.b64encode(f"{client.client_id}:{client.secret}".encode()).decode()
    form = {
        "grant_type": "authorization_code",
        "code": callback["code"],
        "redirect_uri": REDIRECT_URI,
        "code_verifier": request.verifier,
    }
    async with httpx.AsyncClient(timeout=10) as http:
        answer = await http.post(
            f"{idp.issuer}/token", data=form, headers={"Authorization": f"Basic {raw}"}
        )
    assert answer.status_code in (400, 401), answer.text
    assert answer.json()["error"] in ("invalid_request", "invalid_client")


async def test_offline_access_without_consent_gives_no_refresh_token(
    oidc_idp: OidcIdpSetup, client: Client, browser: httpx.AsyncClient
) -> None:
    # OIDC Core §11: offline_access is ignored unless the prompt includes consent.
    idp = oidc_idp.idp
    address, _ = new_account(idp)
    request, callback = await signed_in(idp, browser, client, address, prompt="login")
    tokens = await redeem(idp, client, request, callback["code"])
    assert tokens.status_code == 200, tokens.text
    assert "refresh_token" not in tokens.json()
    assert "offline_access" not in tokens.json()["scope"]


async def test_pkce_is_required_and_checked(
    oidc_idp: OidcIdpSetup, client: Client, browser: httpx.AsyncClient
) -> None:
    idp = oidc_idp.idp
    address, _ = new_account(idp)
    request, callback = await signed_in(idp, browser, client, address)
    wrong = Authorization(request.url, request.state, request.nonce, secrets.token_urlsafe(48))
    answer = await redeem(idp, client, wrong, callback["code"])
    assert (answer.status_code, answer.json()["error"]) == (400, "invalid_grant")
    without = request.url.replace("code_challenge_method=S256", "").split("&code_challenge=")[0]
    page = await browser.get(without)  # no challenge: refused before any sign-in
    assert page.status_code in (302, 303)
    assert "error=invalid_request" in page.headers["location"]


async def test_denying_consent_returns_access_denied_with_the_issuer(
    oidc_idp: OidcIdpSetup, client: Client, browser: httpx.AsyncClient
) -> None:
    idp = oidc_idp.idp
    address, _ = new_account(idp)
    request = authorization(idp, client, address, "consent")
    callback = await sign_in(browser, request.url, address, stop_at=REDIRECT_URI, decision="deny")
    query = parse_qs(urlsplit(callback).query)
    assert query["error"] == ["access_denied"]
    assert (query["state"], query["iss"]) == ([request.state], [idp.issuer])


async def test_revoking_the_refresh_token_at_the_revocation_endpoint_ends_the_grant(
    oidc_idp: OidcIdpSetup, client: Client, browser: httpx.AsyncClient
) -> None:
    # What the broker does on unlink (RFC 7009); the provider's log shows it.
    idp = oidc_idp.idp
    address, sub = new_account(idp)
    request, callback = await signed_in(idp, browser, client, address)
    body = (await redeem(idp, client, request, callback["code"])).json()
    async with httpx.AsyncClient(timeout=10) as http:
        answer = await http.post(
            f"{idp.issuer}/token/revocation",
            data={"token": body["refresh_token"], "token_type_hint": "refresh_token"},
            headers={"Authorization": client.basic()},
        )
    assert answer.status_code == 200, answer.text
    assert (await introspect(idp, body["access_token"])) == {"active": False}
    kinds = {(event.kind, event.via) for event in idp.revocations(sub)}
    assert kinds == {("refresh_token", "revocation"), ("grant", "revocation")}
    assert {event.kind for event in idp.issued(sub)} == {"access_token", "refresh_token"}
