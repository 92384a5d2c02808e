"""Talks OAuth 2.0 / OpenID Connect to one provider with authlib: sign-in URL, code exchange,
refresh, revocation, id token checks, and reading which mailbox signed in."""

import logging
import ssl
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx2
from authlib.integrations.httpx_client import AsyncOAuth2Client, OAuthError
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from pydantic import SecretStr

from mailbox_link_contract.events import ProviderType
from mailbox_link_contract.failures import FailureCode
from oauth_broker.domain.outcomes import AuthorizationFailed, ProviderRefused, ProviderUnreachable
from oauth_broker.domain.providers import MailboxProfile, ProviderEndpoints
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
    """The addresses of the account that signed in, and a refresh token the lookup rotated."""

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
        """Returns the provider sign-in URL for a session: state, PKCE S256, nonce, hint."""
        endpoints = self.app.endpoints
        url: str = prepare_grant_uri(
            endpoints.authorize_url,
            client_id=self.app.client_id,
            response_type="code",
            redirect_uri=self.app.redirect_uri,
            scope=" ".join(endpoints.scopes),
            state=secrets.state,
            code_challenge=create_s256_code_challenge(secrets.code_verifier),
            code_challenge_method="S256",
            nonce=secrets.nonce,
            login_hint=login_hint,
            **dict(endpoints.authorize_params),
        )
        return url

    async def exchange_code(self, code: str, code_verifier: str, now: datetime) -> TokenResponse:
        """Trades the callback's code (with the PKCE verifier) for tokens."""
        extra = _scope_param(self.app.endpoints.token_scopes)
        async with self._client() as client:
            token = await self._token_call(
                client.fetch_token(
                    self.app.endpoints.token_url,
                    grant_type="authorization_code",
                    code=code,
                    code_verifier=code_verifier,
                    **extra,
                )
            )
        return _token_response(token, self.app.endpoints.scopes, now)

    async def refresh(
        self, refresh_token: str, now: datetime, scopes: tuple[str, ...] = ()
    ) -> TokenResponse:
        """Renews an access token; raises ProviderRefused(is_final) when the grant is gone."""
        wanted = scopes or self.app.endpoints.token_scopes
        async with self._client() as client:
            token = await self._token_call(
                client.refresh_token(
                    self.app.endpoints.token_url,
                    refresh_token=refresh_token,
                    # Without scopes of our own, send none: the refresh then covers what was
                    # granted (RFC 6749 section 6). authlib would otherwise send every scope
                    # asked at sign-in, refused (invalid_scope) once the user unchecked one.
                    scope=" ".join(wanted) or None,
                )
            )
        return _token_response(token, wanted or self.app.endpoints.scopes, now)

    async def revoke(self, token: str) -> bool:
        """Revokes a token where the provider offers it; False where it does not."""
        url = self.app.endpoints.revocation_url
        if url is None:
            return False
        async with self._client() as client:
            try:
                response = await client.revoke_token(
                    url,
                    token=token,
                    token_type_hint="refresh_token",  # noqa: S106
                )
            except httpx2.HTTPError as exc:
                raise ProviderUnreachable(f"revocation failed: {type(exc).__name__}") from None
        if response.status_code >= 400:
            raise ProviderRefused("revocation_refused", "", response.status_code)
        return True

    async def check_id_token(self, id_token: str, nonce: str) -> dict[str, Any]:
        """Verifies the id token's signature, issuer, audience, expiry and our nonce."""
        endpoints = self.app.endpoints
        try:
            claims = await self._decode(id_token)
            expected: dict[str, Any] = {
                "aud": {"essential": True, "value": self.app.client_id},
                "nonce": {"essential": True, "value": nonce},
                "exp": {"essential": True},
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
        if profile is MailboxProfile.GMAIL:
            return await self._gmail_mailbox(tokens.access_token)
        if profile is MailboxProfile.GRAPH:
            return await self._graph_mailbox(tokens, now)
        userinfo = await self._get_json(self.app.endpoints.userinfo_url, tokens.access_token)
        return SignedInMailbox(_verified_email(userinfo), subject=_subject(userinfo, "sub"))

    async def _gmail_mailbox(self, access_token: str) -> SignedInMailbox:
        userinfo = await self._get_json(self.app.endpoints.userinfo_url, access_token)
        signed_in = _verified_email(userinfo)
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
        return SignedInMailbox(
            (str(profile.get("emailAddress", "")), *signed_in), subject=_subject(userinfo, "sub")
        )

    async def _graph_mailbox(self, tokens: TokenResponse, now: datetime) -> SignedInMailbox:
        # Graph is another resource than Outlook's IMAP/SMTP: its token comes from the refresh
        # token, and the refresh token it returns is the one to keep.
        if tokens.refresh_token is None:
            raise AuthorizationFailed(FailureCode.NO_REFRESH_TOKEN, "no refresh token granted")
        graph = await self.refresh(tokens.refresh_token, now, self.app.endpoints.profile_scopes)
        me = await self._get_json(self.app.endpoints.profile_url or "", graph.access_token)
        addresses = tuple(str(me[key]) for key in ("mail", "userPrincipalName") if me.get(key))
        return SignedInMailbox(addresses, graph.refresh_token, subject=_subject(me, "id"))

    async def _get_json(self, url: str, access_token: str | None) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {access_token}"} if access_token else {}
        if self._http is None:
            self._http = httpx2.AsyncClient(verify=self._tls, timeout=self._timeout)
        try:
            response = await self._http.get(url, headers=headers)
        except httpx2.HTTPError as exc:
            raise ProviderUnreachable(f"{url}: {type(exc).__name__}") from None
        if response.status_code >= 500:
            raise ProviderUnreachable(f"{url} answered {response.status_code}")
        body = _json_object(response)
        if response.status_code >= 400:
            raise ProviderRefused(*_error_of(body), response.status_code)
        return body

    async def _token_call(self, call: Any) -> dict[str, Any]:
        try:
            token: dict[str, Any] = dict(await call)
        except OAuthError as exc:
            raise ProviderRefused(str(exc.error), str(exc.description or "")) from None
        except httpx2.HTTPStatusError as exc:
            raise ProviderUnreachable(
                f"token endpoint answered {exc.response.status_code}"
            ) from None
        except (httpx2.HTTPError, ValueError) as exc:
            raise ProviderUnreachable(f"token endpoint: {type(exc).__name__}") from None
        return token

    def _client(self) -> AsyncOAuth2Client:
        return AsyncOAuth2Client(
            client_id=self.app.client_id,
            client_secret=self.app.client_secret.get_secret_value(),
            scope=" ".join(self.app.endpoints.scopes),
            redirect_uri=self.app.redirect_uri,
            code_challenge_method="S256",
            verify=self._tls,
            timeout=self._timeout,
        )


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


def _verified_email(userinfo: dict[str, Any]) -> tuple[str, ...]:
    email = userinfo.get("email")
    # An unverified address proves nothing about who owns the mailbox.
    if not email or userinfo.get("email_verified") is False:
        return ()
    return (str(email),)


def _subject(claims: dict[str, Any], name: str) -> str | None:
    value = claims.get(name)
    return str(value) if value else None


def _json_object(response: httpx2.Response) -> dict[str, Any]:
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
