"""A local OAuth 2.0 / OpenID Connect authorization server that plays Google, Microsoft, Yahoo
and AOL for the OAuth broker's end-to-end tests.

Each provider lives under its own path prefix (``/google``, ``/microsoft``, ...) with its own
issuer, discovery document, consent page, token endpoint and userinfo, built on authlib's server
components (authorization code grant with PKCE S256 and OpenID Connect, refresh tokens, RFC 7009
revocation, bearer token validation). The quirks that matter to a broker are kept: Google keeps
its refresh token on refresh, has a revocation endpoint and the Gmail profile API; Microsoft has
Graph's ``/me``; Microsoft, Yahoo and AOL rotate refresh tokens.

Every issued access token is granted at the stack's token introspection endpoint, so the OAuth
Dovecot accepts it over XOAUTH2. The server speaks HTTPS with the stack's certificate (the name
in it is ``localhost``) from a daemon thread of the process that owns the stack; all state is in
memory.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import html
import re
import secrets
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote_plus, urlencode

import flask
from authlib.integrations.flask_oauth2 import AuthorizationServer, ResourceProtector
from authlib.integrations.flask_oauth2.requests import FlaskOAuth2Payload, FlaskOAuth2Request
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import OAuth2Request, scope_to_list
from authlib.oauth2.rfc6749.errors import InvalidRequestError
from authlib.oauth2.rfc6749.grants import AuthorizationCodeGrant, RefreshTokenGrant
from authlib.oauth2.rfc6750 import (
    BearerTokenGenerator,
    BearerTokenValidator,
    InsufficientScopeError,
)
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oidc.core.grants import OpenIDCode
from joserfc.jwk import RSAKey
from werkzeug.datastructures import MultiDict
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from localinfra.token_introspection import TokenIntrospection

PROVIDERS = ("google", "microsoft", "yahoo", "aol")
GMAIL_SCOPE = "https://mail.google.com/"
CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]
_OIDC_SCOPES = ("openid", "email", "profile")
_CODE_LIFETIME = 600  # seconds, RFC 6749's recommended maximum


@dataclass(frozen=True)
class _ProviderSpec:
    """What sets one provider apart from the others."""

    name: str
    title: str
    scopes: tuple[str, ...]
    rotates_refresh_tokens: bool
    revocation: bool = False


_SPECS = {
    "google": _ProviderSpec(
        "google",
        "Google",
        (
            *_OIDC_SCOPES,
            GMAIL_SCOPE,
            "https://www.googleapis.com/auth/userinfo.email",
            "https://www.googleapis.com/auth/userinfo.profile",
        ),
        rotates_refresh_tokens=False,
        revocation=True,
    ),
    "microsoft": _ProviderSpec(
        "microsoft",
        "Microsoft",
        (
            *_OIDC_SCOPES,
            "offline_access",
            "User.Read",
            "https://outlook.office.com/IMAP.AccessAsUser.All",
            "https://outlook.office.com/SMTP.Send",
        ),
        rotates_refresh_tokens=True,
    ),
    "yahoo": _ProviderSpec("yahoo", "Yahoo", (*_OIDC_SCOPES, "mail-r", "mail-w"), True),
    "aol": _ProviderSpec("aol", "AOL", (*_OIDC_SCOPES, "mail-r", "mail-w"), True),
}


@dataclass(frozen=True)
class _Client:
    """A registered client (authlib's ClientMixin); one client works at every provider."""

    client_id: str
    client_secret: str
    redirect_uris: tuple[str, ...]

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> None:
        return None  # like Google: the request must name its redirect_uri

    def get_allowed_scope(self, scope: str | None) -> str | None:
        return scope or None  # no scope at all is invalid_scope

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        return hmac.compare_digest(client_secret, self.client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method in CLIENT_AUTH_METHODS

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in ("authorization_code", "refresh_token")


@dataclass(frozen=True)
class _User:
    """An account at one provider, with the ways it can make a sign-in go wrong."""

    provider: str
    email: str
    gmail_disabled: bool = False
    imap_disabled: bool = False
    no_refresh_token: bool = False
    token_error: bool = False
    no_id_token: bool = False
    userinfo_sub: str | None = None
    subject: str | None = None  # set: another account than the address's usual one

    @property
    def sub(self) -> str:
        """Stable per provider and address, digits only like Google's."""
        if self.subject is not None:
            return self.subject
        digest = hashlib.sha256(f"{self.provider}:{self.email.lower()}".encode()).digest()
        return str(int.from_bytes(digest[:9], "big") % 10**21).zfill(21)

    @property
    def name(self) -> str:
        return self.email.split("@")[0].replace(".", " ").title()

    def claims(self) -> dict[str, Any]:
        return {"sub": self.sub, "email": self.email, "email_verified": True, "name": self.name}

    def userinfo(self) -> dict[str, Any]:
        """What userinfo answers: the id token's claims, or another account's `sub`."""
        return {**self.claims(), "sub": self.userinfo_sub or self.sub}


@dataclass(frozen=True)
class _AuthorizationCode:
    """An issued code (authlib's AuthorizationCodeMixin), bound to what the consent decided."""

    code: str
    provider: str
    client_id: str
    redirect_uri: str
    scope: str
    email: str
    nonce: str | None
    code_challenge: str | None
    code_challenge_method: str | None
    issued_at: float = field(default_factory=time.time)

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self) -> str | None:
        return self.nonce

    def get_auth_time(self) -> int:
        return int(self.issued_at)

    def get_acr(self) -> None:
        return None

    def get_amr(self) -> None:
        return None

    def is_expired(self) -> bool:
        return time.time() > self.issued_at + _CODE_LIFETIME


@dataclass(eq=False)
class _IssuedToken:
    """An access or refresh token (authlib's TokenMixin). ``grant_id`` ties together all tokens
    one sign-in produced, so revoking one of them can revoke them all."""

    value: str
    kind: Literal["access_token", "refresh_token"]
    provider: str
    client_id: str
    email: str
    scope: str
    grant_id: str
    expires_at: float | None = None  # refresh tokens do not expire here
    revoked: bool = False

    def check_client(self, client: _Client | None) -> bool:
        return client is not None and client.client_id == self.client_id

    def get_scope(self) -> str:
        return self.scope

    def is_expired(self) -> bool:
        return self.expires_at is not None and time.time() >= self.expires_at

    def is_revoked(self) -> bool:
        return self.revoked


class _Store:
    """Everything the server remembers. Requests run in threads, so one lock guards it all."""

    def __init__(self, introspection: TokenIntrospection) -> None:
        self._introspection = introspection
        self._lock = threading.Lock()
        self._clients: dict[str, _Client] = {}
        self._users: dict[tuple[str, str], _User] = {}
        self._codes: dict[str, _AuthorizationCode] = {}
        self._tokens: dict[str, _IssuedToken] = {}
        self._authorize_params: dict[str, dict[str, str]] = {}
        self.revoked: set[str] = set()
        self.token_requests: list[tuple[str, str]] = []
        self.client_auth_methods: list[str] = []
        self.outages: dict[str, tuple[int, str]] = {}
        self.access_token_lifetime = 3600
        # RFC 9207 (send_iss): off by default, as at Google, Microsoft, Yahoo and AOL today.
        self.iss_parameter = False
        self.iss_override: str | None = None

    def add_client(self, client: _Client) -> None:
        with self._lock:
            self._clients[client.client_id] = client

    def client(self, client_id: str) -> _Client | None:
        with self._lock:
            return self._clients.get(client_id)

    def add_user(self, user: _User) -> None:
        with self._lock:
            self._users[(user.provider, user.email.lower())] = user

    def user(self, provider: str, email: str) -> _User | None:
        with self._lock:
            return self._users.get((provider, email.strip().lower()))

    def add_code(self, code: _AuthorizationCode) -> None:
        with self._lock:
            self._codes[code.code] = code

    def code(self, value: str, provider: str, client_id: str) -> _AuthorizationCode | None:
        with self._lock:
            code = self._codes.get(value)
        if code is None or code.is_expired():
            return None
        return code if (code.provider, code.client_id) == (provider, client_id) else None

    def delete_code(self, value: str) -> None:
        with self._lock:
            self._codes.pop(value, None)

    def nonce_in_use(self, client_id: str, nonce: str) -> bool:
        with self._lock:
            codes = list(self._codes.values())
        return any(c.client_id == client_id and c.nonce == nonce for c in codes)

    def save_tokens(self, tokens: list[_IssuedToken], mail_login: bool) -> None:
        """Keeps `tokens`; with `mail_login` the mail servers accept their access tokens."""
        with self._lock:
            for token in tokens:
                self._tokens[token.value] = token
                if mail_login and token.kind == "access_token":
                    self._introspection.grant(token.value, token.email, token.expires_at)

    def issued(self, email: str) -> list[_IssuedToken]:
        with self._lock:
            return [t for t in self._tokens.values() if t.email.lower() == email.strip().lower()]

    def token(self, value: str, provider: str) -> _IssuedToken | None:
        with self._lock:
            token = self._tokens.get(value)
        return token if token is not None and token.provider == provider else None

    def revoke(self, match: Callable[[_IssuedToken], bool]) -> None:
        """Revokes every token `match` picks, at the mail servers too."""
        with self._lock:
            for token in self._tokens.values():
                if match(token) and not token.revoked:
                    token.revoked = True
                    self.revoked.add(token.value)
                    self._introspection.revoke(token.value)

    def record_authorize(self, params: dict[str, str]) -> None:
        with self._lock:
            self._authorize_params[params.get("state", "")] = params

    def authorize_params(self, state: str) -> dict[str, str]:
        with self._lock:
            return dict(self._authorize_params[state])

    def record_token_request(self, provider: str, grant_type: str) -> None:
        with self._lock:
            self.token_requests.append((provider, grant_type))

    def record_client_auth(self, method: str) -> None:
        with self._lock:
            self.client_auth_methods.append(method)


class _ServerError(OAuth2Error):  # type: ignore[misc]
    """A provider failing internally at the token endpoint (the ``token_error`` users)."""

    error = "server_error"
    status_code = 500


class _AuthorizationServer(AuthorizationServer):  # type: ignore[misc]
    """One provider's authlib authorization server; its state is the shared store."""

    def __init__(
        self, spec: _ProviderSpec, store: _Store, key: RSAKey, base_url: Callable[[], str]
    ) -> None:
        super().__init__(query_client=store.client, save_token=self._save_token)
        self.spec = spec
        self.store = store
        self.key = key
        self._base_url = base_url
        self.scopes_supported = list(spec.scopes)
        self._bearer = BearerTokenGenerator(_random_token, _random_token, self._lifetime)
        self.register_token_generator("default", self._generate_token)
        self.register_client_auth_method("client_secret_basic", self._basic_auth)
        self.register_client_auth_method("client_secret_post", self._post_auth)
        self.register_grant(_CodeGrant, [_RequiredS256Challenge(), _OpenIDCode(self)])
        self.register_grant(_RefreshGrant)
        if spec.revocation:
            self.register_endpoint(_Revocation)

    @property
    def issuer(self) -> str:
        return f"{self._base_url()}/{self.spec.name}"

    def create_oauth2_request(self, request: object) -> OAuth2Request:
        # The consent form brings its own request (see query_request); others are Flask's.
        if isinstance(request, OAuth2Request):
            return request
        return super().create_oauth2_request(request)

    def query_request(self, query: MultiDict[str, str]) -> OAuth2Request:
        """An authorize request made of `query` alone. The consent form posts fields of its
        own (one of them is `scope`, repeated) that must not mix with the client's parameters."""
        request = FlaskOAuth2Request(flask.request)
        request.payload = _QueryPayload(query)
        return request

    def _lifetime(self, client: _Client, grant_type: str) -> int:
        return self.store.access_token_lifetime

    def _basic_auth(self, query_client: Callable[[str], _Client | None], request: Any) -> Any:
        """client_secret_basic as RFC 6749 2.3.1 has it: the id and the secret are each
        form-decoded (a '+' is a space, '%2B' a plus) after the base64 is split at its first
        ':'. (authlib's own decodes '%XX' but keeps '+', so it lets raw secrets through.)"""
        client_id, client_secret = _basic_credentials(request.headers.get("Authorization", ""))
        client = query_client(client_id) if client_id else None
        if client is None or client_secret is None or not client.check_client_secret(client_secret):
            return None
        self.store.record_client_auth("client_secret_basic")
        return client

    def _post_auth(self, query_client: Callable[[str], _Client | None], request: Any) -> Any:
        form = request.form
        client_id, client_secret = form.get("client_id"), form.get("client_secret")
        client = query_client(client_id) if client_id else None
        if client is None or client_secret is None or not client.check_client_secret(client_secret):
            return None
        self.store.record_client_auth("client_secret_post")
        return client

    def _generate_token(
        self,
        grant_type: str,
        client: _Client,
        user: _User | None = None,
        scope: str | None = None,
        expires_in: int | None = None,
        include_refresh_token: bool = True,
    ) -> dict[str, Any]:
        offline = include_refresh_token and user is not None and not user.no_refresh_token
        token: dict[str, Any] = self._bearer(grant_type, client, user, scope, expires_in, offline)
        return token

    def _save_token(self, token: dict[str, Any], request: OAuth2Request) -> None:
        user: _User = request.user
        previous: _IssuedToken | None = request.refresh_token
        issued = {
            "provider": self.spec.name,
            "client_id": request.client.client_id,
            "email": user.email,
            "scope": token.get("scope", ""),
            "grant_id": previous.grant_id if previous else secrets.token_hex(8),
        }
        expires_at = time.time() + token.get("expires_in", 0)
        tokens = [
            _IssuedToken(token["access_token"], "access_token", **issued, expires_at=expires_at)
        ]
        if "refresh_token" in token:
            # A rotated refresh token keeps the whole grant's scope, even when this refresh
            # asked for less (Microsoft: a Graph token from a grant that also covers IMAP).
            kept = {**issued, "scope": previous.scope} if previous else issued
            tokens.append(_IssuedToken(token["refresh_token"], "refresh_token", **kept))
        # With IMAP off for the mailbox the provider still issues tokens; the mail servers
        # refuse them (Microsoft 365 does this).
        self.store.save_tokens(tokens, mail_login=not user.imap_disabled)


class _QueryPayload(FlaskOAuth2Payload):  # type: ignore[misc]
    """Authorize parameters from a given query instead of Flask's args and form."""

    def __init__(self, query: MultiDict[str, str]) -> None:
        self._query = query

    @property
    def data(self) -> MultiDict[str, str]:
        return self._query


class _CodeGrant(AuthorizationCodeGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = CLIENT_AUTH_METHODS
    server: _AuthorizationServer

    def save_authorization_code(self, code: str, request: OAuth2Request) -> None:
        data = request.payload.data
        self.server.store.add_code(
            _AuthorizationCode(
                code=code,
                provider=self.server.spec.name,
                client_id=request.client.client_id,
                redirect_uri=data["redirect_uri"],
                scope=request.scope,
                email=request.user.email,
                nonce=data.get("nonce"),
                code_challenge=data.get("code_challenge"),
                code_challenge_method=data.get("code_challenge_method"),
            )
        )

    def query_authorization_code(self, code: str, client: _Client) -> _AuthorizationCode | None:
        return self.server.store.code(code, self.server.spec.name, client.client_id)

    def delete_authorization_code(self, authorization_code: _AuthorizationCode) -> None:
        self.server.store.delete_code(authorization_code.code)

    def authenticate_user(self, authorization_code: _AuthorizationCode) -> _User | None:
        user = self.server.store.user(self.server.spec.name, authorization_code.email)
        if user is not None and user.token_error:
            raise _ServerError()
        return user


class _RefreshGrant(RefreshTokenGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = CLIENT_AUTH_METHODS
    server: _AuthorizationServer

    def __init__(self, request: OAuth2Request, server: _AuthorizationServer) -> None:
        super().__init__(request, server)
        # Microsoft, Yahoo and AOL answer a refresh with a new refresh token; Google keeps its.
        self.INCLUDE_NEW_REFRESH_TOKEN = server.spec.rotates_refresh_tokens

    def authenticate_refresh_token(self, refresh_token: str) -> _IssuedToken | None:
        token = self.server.store.token(refresh_token, self.server.spec.name)
        if token is None or token.kind != "refresh_token" or token.revoked:
            return None
        return token

    def authenticate_user(self, refresh_token: _IssuedToken) -> _User | None:
        return self.server.store.user(self.server.spec.name, refresh_token.email)

    def revoke_old_credential(self, refresh_token: _IssuedToken) -> None:
        if self.INCLUDE_NEW_REFRESH_TOKEN:
            self.server.store.revoke(lambda token: token is refresh_token)


class _RequiredS256Challenge(CodeChallenge):  # type: ignore[misc]
    """PKCE is mandatory here, and only with S256 (what the broker must send)."""

    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]

    def __init__(self) -> None:
        super().__init__(required=True)

    def validate_code_challenge(self, grant: _CodeGrant, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError("Missing 'code_challenge'")
        if data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("Use code_challenge_method=S256")
        super().validate_code_challenge(grant, redirect_uri)


class _OpenIDCode(OpenIDCode):  # type: ignore[misc]
    """id_tokens signed RS256 with the server's key, carrying the user's claims and nonce."""

    def __init__(self, server: _AuthorizationServer) -> None:
        super().__init__(require_nonce=False)
        self._server = server

    def exists_nonce(self, nonce: str, request: OAuth2Request) -> bool:
        return self._server.store.nonce_in_use(request.payload.client_id, nonce)

    def resolve_client_private_key(self, client: _Client) -> RSAKey:
        return self._server.key

    def get_client_claims(self, client: _Client) -> dict[str, Any]:
        return {"iss": self._server.issuer, "aud": client.client_id}

    def get_encode_header(self, client: _Client) -> dict[str, Any]:
        return {"alg": "RS256", "kid": self._server.key.kid}

    def generate_user_info(self, user: _User, scope: str) -> dict[str, Any]:
        return user.claims()

    def process_token(self, grant: Any, response: Any) -> dict[str, Any]:
        token: dict[str, Any] = super().process_token(grant, response)
        if grant.request.user is not None and grant.request.user.no_id_token:
            token.pop("id_token", None)  # a provider that ignores openid at the token endpoint
        return token


class _Revocation(RevocationEndpoint):  # type: ignore[misc]
    CLIENT_AUTH_METHODS = CLIENT_AUTH_METHODS
    server: _AuthorizationServer

    def authenticate_endpoint_client(self, request: OAuth2Request) -> _Client | None:
        client: _Client | None
        if "Authorization" in request.headers or "client_secret" in request.form:
            client = super().authenticate_endpoint_client(request)
            return client
        # Google's revoke endpoint needs no client authentication: the token names its client.
        token = self.query_token(request.form.get("token", ""), None)
        client = self.server.store.client(token.client_id) if token else None
        request.client = client
        return client

    def query_token(self, token_string: str, token_type_hint: str | None) -> _IssuedToken | None:
        return self.server.store.token(token_string, self.server.spec.name)

    def revoke_token(self, token: _IssuedToken, request: OAuth2Request) -> None:
        # Google revokes the whole grant, whichever of its tokens is sent.
        self.server.store.revoke(lambda other: other.grant_id == token.grant_id)


class _BearerValidator(BearerTokenValidator):  # type: ignore[misc]
    def __init__(self, server: _AuthorizationServer) -> None:
        super().__init__()
        self._server = server

    def authenticate_token(self, token_string: str) -> _IssuedToken | None:
        token = self._server.store.token(token_string, self._server.spec.name)
        return token if token is not None and token.kind == "access_token" else None


class _ProviderSite:
    """The HTTP endpoints of one provider, as a Flask blueprint under ``/<provider>``."""

    def __init__(self, server: _AuthorizationServer) -> None:
        self.server = server
        self.store = server.store
        self.spec = server.spec
        self.protector = ResourceProtector()
        self.protector.register_token_validator(_BearerValidator(server))

    def blueprint(self) -> flask.Blueprint:
        bp = flask.Blueprint(self.spec.name, __name__, url_prefix=f"/{self.spec.name}")
        bp.add_url_rule("/.well-known/openid-configuration", view_func=self.discovery)
        bp.add_url_rule("/jwks", view_func=self.jwks)
        bp.add_url_rule("/authorize", view_func=self.authorize, methods=["GET", "POST"])
        bp.add_url_rule("/token", view_func=self.token, methods=["POST"])
        bp.add_url_rule("/userinfo", view_func=self.userinfo)
        if self.spec.revocation:
            bp.add_url_rule("/revoke", view_func=self.revoke, methods=["POST"])
        if self.spec.name == "google":
            bp.add_url_rule("/gmail/v1/users/me/profile", view_func=self.gmail_profile)
        if self.spec.name == "microsoft":
            bp.add_url_rule("/graph/v1.0/me", view_func=self.graph_me)
        return bp

    def discovery(self) -> flask.Response:
        issuer = self.server.issuer
        document: dict[str, Any] = {
            "issuer": issuer,
            "authorization_endpoint": f"{issuer}/authorize",
            "token_endpoint": f"{issuer}/token",
            "userinfo_endpoint": f"{issuer}/userinfo",
            "jwks_uri": f"{issuer}/jwks",
            "scopes_supported": list(self.spec.scopes),
            "response_types_supported": ["code"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "token_endpoint_auth_methods_supported": CLIENT_AUTH_METHODS,
            "code_challenge_methods_supported": ["S256"],
        }
        if self.spec.revocation:
            document["revocation_endpoint"] = f"{issuer}/revoke"
        if self.store.iss_parameter:
            document["authorization_response_iss_parameter_supported"] = True
        return flask.jsonify(document)

    def jwks(self) -> flask.Response:
        return flask.jsonify({"keys": [self.server.key.as_dict(private=False)]})

    def authorize(self) -> flask.Response:
        if flask.request.method == "GET":
            return self._consent_page()
        return self._decide()

    def _consent_page(self) -> flask.Response:
        query = flask.request.args
        self.store.record_authorize(query.to_dict())
        request = self.server.query_request(query.copy())
        try:
            self.server.get_consent_grant(request)
        except OAuth2Error as error:
            return _response(self.server.handle_error_response(request, error))
        page = _consent_html(
            self.spec.title,
            flask.request.full_path,
            query.get("client_id", ""),
            query.get("login_hint", ""),
            scope_to_list(query.get("scope", "")),
        )
        return flask.Response(page, mimetype="text/html")

    def _decide(self) -> flask.Response:
        form, query = flask.request.form, flask.request.args.copy()
        if form.get("decision") != "allow":
            return self._authorization_response(query, None)
        user = self.store.user(self.spec.name, form.get("account", ""))
        if user is None:
            return flask.Response("no such account", status=400, mimetype="text/plain")
        # Only the scopes the user left checked are granted.
        checked = set(form.getlist("scope"))
        query["scope"] = " ".join(s for s in scope_to_list(query.get("scope", "")) if s in checked)
        return self._authorization_response(query, user)

    def _authorization_response(
        self, query: MultiDict[str, str], user: _User | None
    ) -> flask.Response:
        request = self.server.query_request(query)
        try:
            grant = self.server.get_consent_grant(request, end_user=user)
        except OAuth2Error as error:
            return _response(self.server.handle_error_response(request, error))
        answer = _response(
            self.server.create_authorization_response(request, grant_user=user, grant=grant)
        )
        return self._with_iss(answer)

    def _with_iss(self, answer: flask.Response) -> flask.Response:
        """RFC 9207: the redirect back names the issuer (or the one tests set instead)."""
        location = answer.headers.get("Location")
        if not self.store.iss_parameter or not location:
            return answer
        iss = self.store.iss_override or self.server.issuer
        separator = "&" if "?" in location else "?"
        answer.headers["Location"] = f"{location}{separator}{urlencode({'iss': iss})}"
        return answer

    def token(self) -> flask.Response:
        self.store.record_token_request(self.spec.name, flask.request.form.get("grant_type", ""))
        outage = self.store.outages.get(self.spec.name)
        if outage is not None:
            status, error = outage
            body = {"error": error, "error_description": "try again later"} if error else {}
            return flask.Response(
                flask.json.dumps(body), status=status, mimetype="application/json"
            )
        return _response(self.server.create_token_response())

    def revoke(self) -> flask.Response:
        return _response(self.server.create_endpoint_response("revocation"))

    def userinfo(self) -> flask.Response:
        with self.protector.acquire() as token:
            return flask.jsonify(self._user(token).userinfo())

    def graph_me(self) -> flask.Response:
        with self.protector.acquire() as token:
            user = self._user(token)
            return flask.jsonify(
                id=user.sub, userPrincipalName=user.email, mail=user.email, displayName=user.name
            )

    def gmail_profile(self) -> flask.Response:
        try:
            token = self.protector.acquire_token([GMAIL_SCOPE])
        except InsufficientScopeError:
            return _google_error(
                403,
                "Request had insufficient authentication scopes.",
                "insufficientPermissions",
                "PERMISSION_DENIED",
                detail="Insufficient Permission",
            )
        except OAuth2Error:
            return _google_error(
                401,
                "Request had invalid authentication credentials.",
                "authError",
                "UNAUTHENTICATED",
                detail="Invalid Credentials",
            )
        user = self._user(token)
        if user.gmail_disabled:
            message = "Mail service not enabled"
            return _google_error(400, message, "failedPrecondition", "FAILED_PRECONDITION")
        return flask.jsonify(
            emailAddress=user.email, messagesTotal=0, threadsTotal=0, historyId="1"
        )

    def _user(self, token: _IssuedToken) -> _User:
        user = self.store.user(token.provider, token.email)
        assert user is not None  # users are never removed
        return user


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Tests make many requests; werkzeug would log every one of them."""


class LocalOAuthServer:
    """Google, Microsoft, Yahoo and AOL sign-in under ``https://localhost:<port>/<provider>``.

    Clients trust the stack's CA file and authenticate at the token endpoint with
    client_secret_basic (id and secret form-encoded, RFC 6749 2.3.1) or client_secret_post;
    PKCE S256 is required.
    """

    def __init__(
        self, introspection: TokenIntrospection, cert_file: Path | str, key_file: Path | str
    ) -> None:
        self._store = _Store(introspection)
        self._cert_file = Path(cert_file)
        self._key_file = Path(key_file)
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        key = RSAKey.generate_key(2048, parameters={"use": "sig", "alg": "RS256"}, auto_kid=True)
        self._app = flask.Flask(__name__)
        for name in PROVIDERS:
            server = _AuthorizationServer(_SPECS[name], self._store, key, lambda: self.base_url)
            self._app.register_blueprint(_ProviderSite(server).blueprint())

    @property
    def base_url(self) -> str:
        """``https://localhost:<port>``; the stack's certificate names ``localhost``."""
        if self._server is None:
            raise RuntimeError("LocalOAuthServer not started")
        return f"https://localhost:{self._server.port}"

    def issuer(self, provider: str) -> str:
        """The provider's issuer; its discovery document is under ``/.well-known/``."""
        return f"{self.base_url}/{_spec(provider).name}"

    @property
    def access_token_lifetime(self) -> int:
        """Seconds an access token lives (``expires_in``); tests may set it low."""
        return self._store.access_token_lifetime

    @access_token_lifetime.setter
    def access_token_lifetime(self, seconds: int) -> None:
        self._store.access_token_lifetime = seconds

    def start(self) -> None:
        """Serves HTTPS on a free loopback port from a daemon thread."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self._cert_file, self._key_file)
        self._server = make_server(
            "127.0.0.1",
            0,
            self._app,
            threaded=True,
            ssl_context=context,
            request_handler=_QuietHandler,
        )
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stops serving (idempotent)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def register_client(
        self, client_id: str, client_secret: str, redirect_uris: Iterable[str]
    ) -> None:
        """Registers (or replaces) a client; it may sign in at every provider."""
        self._store.add_client(_Client(client_id, client_secret, tuple(redirect_uris)))

    def add_user(
        self,
        provider: str,
        email: str,
        *,
        gmail_disabled: bool = False,
        imap_disabled: bool = False,
        no_refresh_token: bool = False,
        token_error: bool = False,
        no_id_token: bool = False,
    ) -> None:
        """Creates (or replaces) an account at `provider`; only accounts can sign in.

        gmail_disabled: Gmail's profile API answers 400 failedPrecondition.
        imap_disabled: tokens are issued but the mail servers refuse them.
        no_refresh_token: the code exchange answers without a refresh token.
        token_error: the code exchange answers 500 server_error.
        no_id_token: the code exchange answers without an id token, even for openid.
        """
        user = _User(
            _spec(provider).name,
            email,
            gmail_disabled=gmail_disabled,
            imap_disabled=imap_disabled,
            no_refresh_token=no_refresh_token,
            token_error=token_error,
            no_id_token=no_id_token,
        )
        self._store.add_user(user)

    def answer_userinfo_as(self, provider: str, email: str, sub: str) -> None:
        """Makes userinfo name another account's `sub` than the id token (a confused or
        compromised provider, OIDC Core 5.3.2)."""
        user = self._store.user(_spec(provider).name, email)
        if user is None:
            raise KeyError(f"no account {email} at {provider}")
        self._store.add_user(replace(user, userinfo_sub=sub))

    def send_iss(self, enabled: bool = True, iss: str | None = None) -> None:
        """RFC 9207 at every provider: discovery advertises it and the redirect back carries
        `iss`, the provider's issuer or, to play a mix-up, `iss`."""
        self._store.iss_parameter, self._store.iss_override = enabled, iss

    def set_subject(self, provider: str, email: str, subject: str | None) -> None:
        """Makes the account under `email` another account: its `sub` (Graph `id`) becomes
        `subject` (a deleted and recreated user); None gives it back its usual one."""
        user = self._store.user(_spec(provider).name, email)
        if user is None:
            raise KeyError(f"no {provider} account {email}")
        self._store.add_user(dataclasses.replace(user, subject=subject))

    def revoke_refresh_tokens(self, provider: str, email: str) -> None:
        """Revokes the account's refresh tokens (a password change, the app removed): a later
        refresh answers invalid_grant. Access tokens stay valid until they expire."""
        name, address = _spec(provider).name, email.lower()
        self._store.revoke(
            lambda t: (t.provider, t.email.lower(), t.kind) == (name, address, "refresh_token")
        )

    def last_authorize_params(self, state: str) -> dict[str, str]:
        """The query of the last authorize request (GET) with this `state`; KeyError if none."""
        return self._store.authorize_params(state)

    def token_outage(self, provider: str, status: int = 503, error: str = "") -> None:
        """Makes the provider's token endpoint answer every request with `status` (and the
        OAuth `error`, e.g. temporarily_unavailable, if given) until `end_token_outage`."""
        self._store.outages[_spec(provider).name] = (status, error)

    def end_token_outage(self, provider: str) -> None:
        """The token endpoint answers again."""
        self._store.outages.pop(_spec(provider).name, None)

    @property
    def client_auth_methods(self) -> list[str]:
        """How each authenticated token or revocation request authenticated its client, in
        order: client_secret_basic or client_secret_post."""
        return list(self._store.client_auth_methods)

    @property
    def token_requests(self) -> list[tuple[str, str]]:
        """(provider, grant_type) of every token request so far, in order."""
        return list(self._store.token_requests)

    @property
    def revoked_tokens(self) -> set[str]:
        """Every access or refresh token revoked so far (revocation, rotation, test controls)."""
        return set(self._store.revoked)

    def issued_tokens(self, email: str, kind: str | None = None) -> list[str]:
        """Returns every token issued to the account (of `kind`: access_token, refresh_token)."""
        return [t.value for t in self._store.issued(email) if kind in (None, t.kind)]

    def was_revoked(self, token: str) -> bool:
        """Whether `token` (access or refresh) has been revoked."""
        return token in self._store.revoked


def _spec(provider: str) -> _ProviderSpec:
    if provider not in _SPECS:
        raise ValueError(f"unknown provider {provider!r}; use one of {', '.join(PROVIDERS)}")
    return _SPECS[provider]


def _basic_credentials(header: str) -> tuple[str | None, str | None]:
    """Returns the form-decoded (client id, client secret) of an HTTP Basic header."""
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None, None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None, None
    client_id, colon, client_secret = decoded.partition(":")
    if not colon:
        return None, None
    return unquote_plus(client_id), unquote_plus(client_secret)


def _random_token(**_: object) -> str:
    return secrets.token_urlsafe(32)


def _response(value: object) -> flask.Response:
    # authlib is untyped; its Flask integration answers with Flask responses.
    assert isinstance(value, flask.Response)
    return value


def _google_error(
    code: int, message: str, reason: str, status: str, detail: str | None = None
) -> flask.Response:
    """An error in the shape Google's APIs answer with."""
    error = {"message": detail or message, "domain": "global", "reason": reason}
    body = {"error": {"code": code, "message": message, "errors": [error], "status": status}}
    response = flask.jsonify(body)
    response.status_code = code
    return response


def _consent_html(
    title: str, action: str, client_id: str, login_hint: str, scopes: Iterable[str]
) -> str:
    def checkbox(scope: str) -> str:
        value = html.escape(scope)
        return (
            f'<label><input type="checkbox" name="scope" value="{value}" checked> {value}</label>'
        )

    account = html.escape(login_hint)
    lines = [
        f"<!doctype html><title>Sign in - {html.escape(title)}</title>",
        f"<h1>{html.escape(client_id)} wants to access your {html.escape(title)} account</h1>",
        f'<form method="post" action="{html.escape(action)}">',
        f'<label>Account <input type="text" name="account" value="{account}"></label>',
        *(checkbox(scope) for scope in scopes),
        '<button type="submit" name="decision" value="allow">Allow</button>',
        '<button type="submit" name="decision" value="deny">Deny</button>',
        "</form>",
    ]
    return "\n".join(lines)


def consent_form(
    page: str, account: str, decision: str = "allow", uncheck: Iterable[str] = ()
) -> dict[str, str | list[str]]:
    """Returns what a person's browser posts back from the consent page: `account` signed in,
    `decision` (allow or deny), and every offered scope except those they `uncheck`."""
    offered = [html.unescape(s) for s in re.findall(r'name="scope" value="([^"]+)"', page)]
    left_out = set(uncheck)
    return {
        "account": account,
        "decision": decision,
        "scope": [scope for scope in offered if scope not in left_out],
    }
