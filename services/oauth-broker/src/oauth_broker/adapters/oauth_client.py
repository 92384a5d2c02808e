"""Talks OAuth 2.0 / OpenID Connect to one provider: sign-in URL (authlib), code exchange,
refresh and revocation (form POSTs with our app's client authentication, RFC 6749 2.3.1),
id token checks, and reading which mailbox signed in."""

import base64
import logging
import ssl
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote_plus

import httpx2
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from pydantic import SecretStr

from mailbox_link_contract.events import ProviderType
from mailbox_link_contract.failures import FailureCode
from mailbox_link_shared.tracing import span
from oauth_broker.adapters.bounded_http import Answer, bounded_request
from oauth_broker.domain.outcomes import AuthorizationFailed, ProviderRefused, ProviderUnreachable
from oauth_broker.domain.providers import MailboxProfile, ProviderEndpoints, TokenAuthMethod
from oauth_broker.domain.sessions import SessionSecrets

logger = logging.getLogger(__name__)
JWKS_LIFETIME = 3600.0  # seconds a provider's signing keys are trusted without asking again


@dataclass(frozen=True)
class OAuthApp:
    """Our registered application at one provider, and that provider's endpoints."""

    provider: ProviderType
    client_id: str
    client_secret: SecretStr
    redirect_uri: str
    endpoints: ProviderEndpoints


@dataclass(frozen=True)
class TokenResponse:
    """What a token endpoint granted; never printed."""

    access_token: str
    refresh_token: str | None
    expires_at: datetime
    scopes: frozenset[str]
    id_token: str | None

    def __repr__(self) -> str:
        return "TokenResponse(<redacted>)"


@dataclass(frozen=True)
class SignedInMailbox:
    """The addresses of the account that signed in, and a refresh token the lookup rotated.

    `subject` is userinfo's `sub` where userinfo was read (None where the profile came from
    elsewhere: Graph's /me): it must equal the id token's (OIDC Core 5.3.2)."""

    addresses: tuple[str, ...]
    rotated_refresh_token: str | None = None
    # The provider's stable id of the account (userinfo `sub`, Graph `id`): an address can be
    # given to another account later, this id is not (a reconnect must come from the same one).
    subject: str | None = None


class OAuthClient:
    """One provider's OAuth client; stateless, so one instance serves every link."""

    def __init__(self, app: OAuthApp, tls: ssl.SSLContext, timeout: float) -> None:
        self.app = app
        self._tls = tls
        self._timeout = timeout
        # One pooled client for the provider's APIs (keys, userinfo, profiles): a sign-in makes
        # several calls, and a TLS handshake each costs more than the call.
        self._http: httpx2.AsyncClient | None = None
        self._keys: tuple[float, KeySet] | None = None  # (fetched at, monotonic), the JWKS

    async def aclose(self) -> None:
        """Closes the pooled connections."""
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    def authorize_url(self, secrets: SessionSecrets, login_hint: str) -> str:
        """Returns the provider sign-in URL for a session: state, PKCE S256, nonce, hint, and
        the provider's own parameters (lasting access, prompt, extras)."""
        endpoints = self.app.endpoints
        url: str = prepare_grant_uri(
            endpoints.authorize_url,
            client_id=self.app.client_id,
            response_type="code",
            redirect_uri=self.app.redirect_uri,
            scope=" ".join(endpoints.requested_scopes),
            state=secrets.state,
            code_challenge=create_s256_code_challenge(secrets.code_verifier),
            code_challenge_method="S256",
            nonce=secrets.nonce,
            login_hint=login_hint,
            **dict(endpoints.sign_in_params()),
        )
        return url

    async def exchange_code(self, code: str, code_verifier: str, now: datetime) -> TokenResponse:
        """Trades the callback's code (with the PKCE verifier) for tokens."""
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "code_verifier": code_verifier,
            "redirect_uri": self.app.redirect_uri,
            **_scope_param(self.app.endpoints.token_scopes),
        }
        # A span with no attributes: the code, the verifier and the tokens are secrets.
        with span("oauth code exchange"):
            token = await self._token_call(form)
        return _token_response(token, self.app.endpoints.scopes, now)

    async def refresh(
        self, refresh_token: str, now: datetime, scopes: tuple[str, ...] = ()
    ) -> TokenResponse:
        """Renews an access token; raises ProviderRefused or ProviderUnreachable, which
        outcomes.classify_refresh_failure tells apart (the user's, for good, or not)."""
        wanted = scopes or self.app.endpoints.token_scopes
        # Without scopes of our own, send none: the refresh then covers what was granted
        # (RFC 6749 section 6). Asking again for every scope of the sign-in would be refused
        # (invalid_scope) once the user unchecked one.
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        token = await self._token_call({**form, **_scope_param(wanted)})
        return _token_response(token, wanted or self.app.endpoints.scopes, now)

    async def revoke(self, token: str, hint: str = "refresh_token") -> bool:
        """Revokes a token (RFC 7009; `hint` is its kind) where the provider offers it; False
        where it does not. Our app authenticates as at the token endpoint."""
        url = self.app.endpoints.revocation_url
        if url is None:
            return False
        try:
            response = await self._post_authenticated(
                url, {"token": token, "token_type_hint": hint}
            )
        except httpx2.HTTPError as exc:
            raise ProviderUnreachable(f"revocation failed: {type(exc).__name__}") from None
        if response.status_code >= 500:
            raise ProviderUnreachable(f"revocation endpoint answered {response.status_code}")
        if response.status_code >= 400:
            error, description = _error_of(_json_object(response))
            raise ProviderRefused(error, description, response.status_code)
        return True

    async def check_id_token(self, id_token: str, nonce: str) -> dict[str, Any]:
        """Verifies the id token's signature, issuer, audience, expiry and our nonce, and that
        it names a subject."""
        endpoints = self.app.endpoints
        try:
            claims = await self._decode(id_token)
            expected: dict[str, Any] = {
                "aud": {"essential": True, "value": self.app.client_id},
                "nonce": {"essential": True, "value": nonce},
                "exp": {"essential": True},
                "sub": {"essential": True},
            }
            if endpoints.issuer is not None:
                expected["iss"] = {"essential": True, "value": endpoints.issuer}
            jwt.JWTClaimsRegistry(**expected).validate(claims)
        except (JoseError, ValueError) as exc:
            raise AuthorizationFailed(
                FailureCode.PROVIDER_ERROR, f"the id token did not check out ({exc})"
            ) from None
        return dict(claims)

    async def _decode(self, id_token: str) -> dict[str, Any]:
        # Keys are cached for an hour; a token signed with a key we do not have yet (the
        # provider rotated) fetches them again once.
        cached = self._keys is not None and time.monotonic() - self._keys[0] < JWKS_LIFETIME
        if self._keys is not None and cached:
            try:
                return dict(jwt.decode(id_token, self._keys[1]).claims)
            except (JoseError, ValueError):
                pass
        document = await self._get_json(self.app.endpoints.jwks_url, None)
        self._keys = (time.monotonic(), KeySet.import_key_set(document))  # type: ignore[arg-type]
        return dict(jwt.decode(id_token, self._keys[1]).claims)

    async def signed_in_mailbox(self, tokens: TokenResponse, now: datetime) -> SignedInMailbox:
        """Reads which mailbox the user signed in to, the provider's way."""
        profile = self.app.endpoints.profile
        # Only the kind of profile call: the answer names the mailbox.
        with span("oauth userinfo", attributes={"oauth.profile": str(profile.name).lower()}):
            return await self._signed_in_mailbox(tokens, now)

    async def _signed_in_mailbox(self, tokens: TokenResponse, now: datetime) -> SignedInMailbox:
        profile = self.app.endpoints.profile
        if profile is MailboxProfile.GMAIL:
            return await self._gmail_mailbox(tokens.access_token)
        if profile is MailboxProfile.GRAPH:
            return await self._graph_mailbox(tokens, now)
        userinfo = await self._get_json(self.app.endpoints.userinfo_url, tokens.access_token)
        claim = self.app.endpoints.email_claim
        return SignedInMailbox(_verified_email(userinfo, claim), subject=_subject(userinfo))

    async def _gmail_mailbox(self, access_token: str) -> SignedInMailbox:
        userinfo = await self._get_json(self.app.endpoints.userinfo_url, access_token)
        signed_in = _verified_email(userinfo, "email")
        url = self.app.endpoints.profile_url or ""
        try:
            profile = await self._get_json(url, access_token)
        except ProviderRefused as refused:
            if "mail service not enabled" in refused.description.lower():
                raise AuthorizationFailed(
                    FailureCode.GMAIL_DISABLED,
                    f"Gmail answered {refused.status} Mail service not enabled for "
                    f"{', '.join(signed_in) or 'this account'}",
                ) from None
            raise
        addresses = (str(profile.get("emailAddress", "")), *signed_in)
        return SignedInMailbox(addresses, subject=_subject(userinfo))

    async def _graph_mailbox(self, tokens: TokenResponse, now: datetime) -> SignedInMailbox:
        # Graph is another resource than Outlook's IMAP/SMTP: its token comes from the refresh
        # token, and the refresh token it returns is the one to keep.
        if tokens.refresh_token is None:
            raise AuthorizationFailed(FailureCode.NO_REFRESH_TOKEN, "no refresh token granted")
        graph = await self.refresh(tokens.refresh_token, now, self.app.endpoints.profile_scopes)
        me = await self._get_json(self.app.endpoints.profile_url or "", graph.access_token)
        addresses = tuple(str(me[key]) for key in ("mail", "userPrincipalName") if me.get(key))
        return SignedInMailbox(addresses, graph.refresh_token)

    async def _get_json(self, url: str, access_token: str | None) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {access_token}"} if access_token else {}
        try:
            response = await bounded_request(self._client(), "GET", url, headers=headers)
        except httpx2.HTTPError as exc:
            raise ProviderUnreachable(f"{url}: {type(exc).__name__}") from None
        if response.status_code >= 500:
            raise ProviderUnreachable(f"{url} answered {response.status_code}")
        body = _json_object(response)
        if response.status_code >= 400:
            raise ProviderRefused(*_error_of(body), response.status_code)
        return body

    async def _token_call(self, form: dict[str, str]) -> dict[str, Any]:
        """POSTs a token request; an OAuth error answer (RFC 6749 5.2) is ProviderRefused with
        its HTTP status, no answer or an answer without an error is ProviderUnreachable."""
        try:
            response = await self._post_authenticated(self.app.endpoints.token_url, form)
        except httpx2.HTTPError as exc:
            raise ProviderUnreachable(f"token endpoint: {type(exc).__name__}") from None
        body = _json_object(response)
        if response.status_code >= 400 and "error" in body:
            raise ProviderRefused(*_error_of(body), response.status_code)
        if response.status_code >= 400:
            raise ProviderUnreachable(f"token endpoint answered {response.status_code}")
        if not body.get("access_token"):
            raise ProviderUnreachable("token endpoint answered without an access token")
        return body

    async def _post_authenticated(self, url: str, form: dict[str, str]) -> Answer:
        """POSTs a form to the token or revocation endpoint, authenticating our app the way
        the provider takes it."""
        method = token_auth_method(self.app.endpoints)
        headers, credentials = client_credentials(
            method, self.app.client_id, self.app.client_secret.get_secret_value()
        )
        headers["Accept"] = "application/json"
        body = {**form, **credentials}
        return await bounded_request(self._client(), "POST", url, data=body, headers=headers)

    def _client(self) -> httpx2.AsyncClient:
        if self._http is None:
            self._http = httpx2.AsyncClient(verify=self._tls, timeout=self._timeout)
        return self._http


def token_auth_method(endpoints: ProviderEndpoints) -> TokenAuthMethod:
    """How our app authenticates at the provider's token and revocation endpoints: as
    configured; else the first method of ours the discovery document lists (in its order);
    else client_secret_basic, the default of RFC 8414 when discovery says nothing."""
    if endpoints.token_auth_method is not None:
        return endpoints.token_auth_method
    ours = {method.value: method for method in TokenAuthMethod}
    for name in endpoints.token_auth_methods_supported:
        if name in ours:
            return ours[name]
    return TokenAuthMethod.BASIC


def client_credentials(
    method: TokenAuthMethod, client_id: str, client_secret: str
) -> tuple[dict[str, str], dict[str, str]]:
    """Returns the headers and form fields that authenticate our app (RFC 6749 2.3.1)."""
    if method is TokenAuthMethod.POST:
        return {}, {"client_id": client_id, "client_secret": client_secret}
    # RFC 6749 2.3.1: the id and the secret are each form-encoded (application/x-www-form-
    # urlencoded) before they are joined with ':' and base64-encoded; sent raw, a secret with
    # '+' or '%' (or an id with ':') reaches a conforming server as another value.
    pair = f"{quote_plus(client_id)}:{quote_plus(client_secret)}"
    return {"Authorization": f"Basic {base64.b64encode(pair.encode()).decode('ascii')}"}, {}


def _scope_param(scopes: tuple[str, ...]) -> dict[str, str]:
    return {"scope": " ".join(scopes)} if scopes else {}


def _token_response(token: dict[str, Any], asked: tuple[str, ...], now: datetime) -> TokenResponse:
    # RFC 6749 5.1: a response without `scope` granted what was asked.
    scope = token.get("scope")
    granted = str(scope).split() if scope else list(asked)
    lifetime = int(token.get("expires_in") or 3600)
    return TokenResponse(
        access_token=str(token["access_token"]),
        refresh_token=str(token["refresh_token"]) if token.get("refresh_token") else None,
        expires_at=now + timedelta(seconds=lifetime),
        scopes=frozenset(granted),
        id_token=str(token["id_token"]) if token.get("id_token") else None,
    )


def _verified_email(userinfo: dict[str, Any], claim: str) -> tuple[str, ...]:
    email = userinfo.get(claim)
    # An unverified address proves nothing about who owns the mailbox; "false" as a string
    # is how some providers spell it.
    if (
        not email
        or not isinstance(email, str)
        or userinfo.get("email_verified") in (False, "false")
    ):
        return ()
    return (email,)


def _subject(userinfo: dict[str, Any]) -> str:
    # "" when missing: OIDC Core 5.3.2 requires it, so it then matches no id token's.
    sub = userinfo.get("sub")
    return sub if isinstance(sub, str) else ""


def _json_object(response: Answer) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _error_of(body: dict[str, Any]) -> tuple[str, str]:
    """Returns (error, description) from an OAuth error or a Google/Graph API error body."""
    error = body.get("error")
    if isinstance(error, dict):  # Google and Graph APIs: {"error": {"code", "message", ...}}
        return str(error.get("status") or error.get("code") or "api_error"), str(
            error.get("message", "")
        )
    return str(error or "http_error"), str(body.get("error_description", ""))
