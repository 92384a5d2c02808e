"""A generic OIDC provider built the way bootstrap builds it (MBL_OIDC_PROVIDERS, discovery),
signed in to through the handlers with the real OAuthClient, against the project's local
authorization server started on its own (no Kafka or mail servers: the mailbox check is the
hand-written fake). It plays a standard provider: RFC 9207 `iss`, a wrong `iss`, no id token,
userinfo about another account, and a discovery document of another issuer."""

import http.server
import json
import os
import secrets
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from broker_fakes import ALICE, BOX, FakeMailServers, InMemoryBrokerStore
from localinfra.certs import make_ca_and_server_cert
from localinfra.oauth_server import LocalOAuthServer, consent_form
from localinfra.token_introspection import TokenIntrospection
from mailbox_link_contract.events import (
    AuthMethod,
    LinkRequested,
    LinkRequestedData,
    LinkReserved,
    LinkReservedData,
    ProviderType,
    ServerSettings,
    VerificationFailed,
    utc_now,
)
from mailbox_link_contract.failures import FailureCode
from mailbox_link_shared.crypto import generate_key
from mailbox_link_shared.publishing import RecordingPublisher
from mailbox_link_shared.settings import tls_context
from oauth_broker import handlers
from oauth_broker.bootstrap import ProviderLoader, _build_clients, _mail_servers
from oauth_broker.config import Settings
from oauth_broker.domain.sessions import CallbackRefusal, binding_cookie_name
from oauth_broker.handlers import BrokerDeps, CallbackOutcome, CallbackResult, OAuthProviderClient

# The server plays providers under /<name>; Microsoft's has the standard offline_access scope.
STANDARD = "microsoft"
REDIRECT_URI = "https://cb.test/v1/oauth/callback"  # registered, never visited
SECRET = "se+cr%t:" + secrets.token_urlsafe(16)
DOMAIN = "corp.example"
# It starts a server (the local OAuth one, in this process): not part of `make unit`.
pytestmark = pytest.mark.connected


@pytest.fixture(scope="module")
def local_oauth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, LocalOAuthServer]]:
    tls = make_ca_and_server_cert(Path(tmp_path_factory.mktemp("tls")))
    introspection = TokenIntrospection()
    introspection.start()
    server = LocalOAuthServer(introspection, tls.cert_file, tls.key_file)
    server.start()
    try:
        yield str(tls.ca_file), server
    finally:
        server.stop()
        introspection.stop()


@pytest.fixture
def oauth(local_oauth: tuple[str, LocalOAuthServer]) -> Iterator[LocalOAuthServer]:
    server = local_oauth[1]
    yield server
    server.send_iss(False)


@pytest.fixture
def settings(
    local_oauth: tuple[str, LocalOAuthServer], monkeypatch: pytest.MonkeyPatch
) -> Settings:
    server = local_oauth[1]
    client_id = f"corp-{secrets.token_hex(4)}"
    server.register_client(client_id, SECRET, [REDIRECT_URI])
    imap = {"host": "mail.corp.example", "port": 993, "security": "ssl"}
    corp = {
        "issuer": server.issuer(STANDARD),
        "client_id": client_id,
        "domains": [DOMAIN],
        "imap": imap,
        "smtp": {**imap, "port": 465},
    }
    # Discovery at one provider of the server, naming the other one's issuer as its own.
    elsewhere = {
        **corp,
        "issuer": server.issuer("yahoo"),
        "discovery_url": f"{server.issuer('aol')}/.well-known/openid-configuration",
    }
    monkeypatch.setenv("MBL_ENCRYPTION_KEYS", json.dumps({"k1": generate_key()}))
    monkeypatch.setenv("MBL_OAUTH_CA_FILE", local_oauth[0])
    monkeypatch.setenv("MBL_OAUTH_REDIRECT_URI", REDIRECT_URI)
    monkeypatch.setenv("MBL_OIDC_PROVIDERS", json.dumps({"corp": corp, "elsewhere": elsewhere}))
    # The secret alone, as an operator gives it to the broker only.
    monkeypatch.setenv("MBL_OIDC_PROVIDERS__CORP__CLIENT_SECRET", SECRET)
    monkeypatch.setenv("MBL_OIDC_PROVIDERS__ELSEWHERE__CLIENT_SECRET", SECRET)
    return Settings()


@pytest.fixture
async def loaded(
    settings: Settings,
) -> AsyncIterator[tuple[dict[str, OAuthProviderClient], dict[str, str]]]:
    clients: dict[str, OAuthProviderClient] = {}
    unavailable: dict[str, str] = {}
    await _build_clients(settings, clients, unavailable)
    yield clients, unavailable
    for client in clients.values():
        await client.aclose()


@pytest.fixture
def deps(
    settings: Settings, loaded: tuple[dict[str, OAuthProviderClient], dict[str, str]]
) -> BrokerDeps:
    return BrokerDeps(
        store=InMemoryBrokerStore(),
        publisher=RecordingPublisher(),
        secret_box=BOX,
        clients=loaded[0],
        check_mailbox=FakeMailServers(),
        mail_servers=_mail_servers(settings),
        unavailable=loaded[1],
    )


@pytest.fixture
async def browser(local_oauth: tuple[str, LocalOAuthServer]) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(verify=tls_context(local_oauth[0]), timeout=10.0) as client:
        yield client


def _account(oauth: LocalOAuthServer, **modes: bool) -> str:
    address = f"user-{secrets.token_hex(4)}@{DOMAIN}"
    oauth.add_user(STANDARD, address, **modes)
    return address


async def _sign_in(
    deps: BrokerDeps, browser: httpx.AsyncClient, address: str
) -> tuple[str, str, dict[str, str], str | None]:
    """Requests, reserves and starts an OIDC link, consents at the provider as `address`;
    returns the callback's state and code, the browser's cookies, and the callback's iss."""
    link_id = secrets.token_hex(8)
    server = ServerSettings(host="mail.corp.example", port=993, security="ssl", username=address)
    data = LinkRequestedData(
        link_id=link_id, owner=ALICE, address=address, provider=ProviderType.OIDC,
        oidc_provider="corp", auth=AuthMethod.OAUTH, imap=server, smtp=server,
    )  # fmt: skip
    await handlers.when_link_requested_open_session(
        LinkRequested(correlation_id=link_id, producer="link-api", data=data), deps
    )
    until = utc_now() + timedelta(hours=1)
    reservation = LinkReservedData(
        link_id=link_id, owner=ALICE, address=address, expires_at=until,
        provider=ProviderType.OIDC,
    )  # fmt: skip
    await handlers.when_link_reserved_offer_sign_in(
        LinkReserved(correlation_id=link_id, producer="registry", data=reservation), deps
    )
    assert isinstance(deps.publisher, RecordingPublisher)
    offer = deps.publisher.events[-1]
    token = urlsplit(offer.data.authorize_url).path.rsplit("/", 1)[-1]  # type: ignore[attr-defined]
    started = await handlers.start_sign_in(token, deps)
    assert started.redirect_url is not None, started.refusal
    assert started.binding is not None
    page = await browser.get(started.redirect_url)
    assert page.status_code == 200, page.text
    answer = await browser.post(started.redirect_url, data=consent_form(page.text, address))
    location = answer.headers["location"]
    assert location.startswith(REDIRECT_URI), location
    query = {key: values[0] for key, values in parse_qs(urlsplit(location).query).items()}
    cookies = {binding_cookie_name(link_id): started.binding}
    return query["state"], query["code"], cookies, query.get("iss")


def _failure(deps: BrokerDeps) -> tuple[FailureCode, str]:
    assert isinstance(deps.publisher, RecordingPublisher)
    failed = deps.publisher.events[-1]
    assert isinstance(failed, VerificationFailed)
    return failed.data.failure.code, failed.data.failure.detail


async def _callback(
    deps: BrokerDeps, signed_in: tuple[str, str, dict[str, str], str | None]
) -> CallbackOutcome:
    state, code, cookies, iss = signed_in
    return await handlers.complete_sign_in(state, code, None, "", deps, cookies, iss=iss)


# --- loading -----------------------------------------------------------------------------------


async def test_a_provider_loads_from_discovery_and_one_naming_another_issuer_does_not(
    oauth: LocalOAuthServer, settings: Settings
) -> None:
    oauth.send_iss()
    clients: dict[str, OAuthProviderClient] = {}
    unavailable: dict[str, str] = {}

    await _build_clients(settings, clients, unavailable)

    assert set(clients) == {"oidc:corp"}
    endpoints = clients["oidc:corp"].app.endpoints
    assert endpoints.issuer == oauth.issuer(STANDARD)
    assert endpoints.token_url == f"{oauth.issuer(STANDARD)}/token"
    assert endpoints.iss_parameter_supported
    assert endpoints.token_auth_methods_supported == ("client_secret_basic", "client_secret_post")
    assert set(unavailable) == {"oidc:elsewhere"}
    assert "issuer" in unavailable["oidc:elsewhere"]
    for client in clients.values():
        await client.aclose()


# --- signing in --------------------------------------------------------------------------------


async def test_a_standard_provider_links_with_lasting_access_and_its_subject(
    oauth: LocalOAuthServer, deps: BrokerDeps, browser: httpx.AsyncClient
) -> None:
    address = _account(oauth)
    signed_in = await _sign_in(deps, browser, address)
    # The sign-in asked for lasting access the standard way.
    asked = oauth.last_authorize_params(signed_in[0])
    assert "offline_access" in asked["scope"].split()
    assert asked["prompt"] == "consent"

    outcome = await _callback(deps, signed_in)

    assert outcome.result is CallbackResult.VERIFIED, outcome.failure
    assert isinstance(deps.store, InMemoryBrokerStore)
    [grant] = deps.store.grants.values()
    assert grant.oidc_provider == "corp"
    assert grant.subject  # the id token's sub, which userinfo's matched
    assert isinstance(deps.check_mailbox, FakeMailServers)
    assert deps.check_mailbox.logins[0][:2] == ("mail.corp.example", address)


async def test_the_providers_iss_passes_and_a_mixed_up_one_changes_nothing(
    oauth: LocalOAuthServer, deps: BrokerDeps, browser: httpx.AsyncClient
) -> None:
    oauth.send_iss(iss="https://attacker.example")
    clients: dict[str, OAuthProviderClient] = {}
    await _build_clients(Settings(), clients, {})  # rediscovered: iss is now advertised
    deps = BrokerDeps(**{**deps.__dict__, "clients": clients})
    state, code, cookies, iss = await _sign_in(deps, browser, _account(oauth))
    assert iss == "https://attacker.example"

    exchanges = len(oauth.token_requests)

    refused = await _callback(deps, (state, code, cookies, iss))
    missing = await _callback(deps, (state, code, cookies, None))  # advertised: must be there

    assert refused.refusal is CallbackRefusal.ISSUER_MISMATCH
    assert missing.refusal is CallbackRefusal.ISSUER_MISMATCH
    assert len(oauth.token_requests) == exchanges  # the code never went to the token endpoint
    outcome = await _callback(deps, (state, code, cookies, oauth.issuer(STANDARD)))
    assert outcome.result is CallbackResult.VERIFIED, outcome.failure
    for client in clients.values():
        await client.aclose()


async def test_no_id_token_for_openid_fails_the_sign_in(
    oauth: LocalOAuthServer, deps: BrokerDeps, browser: httpx.AsyncClient
) -> None:
    outcome = await _callback(
        deps, await _sign_in(deps, browser, _account(oauth, no_id_token=True))
    )

    assert outcome.result is CallbackResult.FAILED
    code, detail = _failure(deps)
    assert code is FailureCode.PROVIDER_ERROR
    assert "no id token" in detail


async def test_userinfo_about_another_account_fails_the_sign_in(
    oauth: LocalOAuthServer, deps: BrokerDeps, browser: httpx.AsyncClient
) -> None:
    address = _account(oauth)
    oauth.answer_userinfo_as(STANDARD, address, "000000000000000000042")

    outcome = await _callback(deps, await _sign_in(deps, browser, address))

    assert outcome.result is CallbackResult.FAILED
    code, detail = _failure(deps)
    assert code is FailureCode.PROVIDER_ERROR
    assert "sub" in detail
    assert isinstance(deps.store, InMemoryBrokerStore)
    assert deps.store.grants == {}


class _DocumentServer:
    """Serves one discovery document over plain HTTP on the loopback, once started."""

    def __init__(self, document: dict[str, object]) -> None:
        body = json.dumps(document).encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                """Quiet."""

        with socket.socket() as probe:  # a free port, taken only once the "IdP comes back"
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self._handler = Handler
        self._server: http.server.HTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/.well-known/openid-configuration"

    def start(self) -> None:
        self._server = http.server.HTTPServer(("127.0.0.1", self.port), self._handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


async def test_a_provider_whose_discovery_was_down_at_start_is_loaded_when_it_is_back(
    oauth: LocalOAuthServer,
    settings: Settings,
    browser: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    issuer = oauth.issuer(STANDARD)
    document = (await browser.get(f"{issuer}/.well-known/openid-configuration")).json()
    idp = _DocumentServer(document)
    corp = json.loads(os.environ["MBL_OIDC_PROVIDERS"])["corp"]
    monkeypatch.setenv(
        "MBL_OIDC_PROVIDERS", json.dumps({"later": {**corp, "discovery_url": idp.url}})
    )
    for name in ("CORP", "ELSEWHERE"):  # a secret alone, without its provider, is refused
        monkeypatch.delenv(f"MBL_OIDC_PROVIDERS__{name}__CLIENT_SECRET")
    monkeypatch.setenv("MBL_OIDC_PROVIDERS__LATER__CLIENT_SECRET", SECRET)
    loader = ProviderLoader(Settings(), {}, {})

    await loader.load_all()
    assert set(loader.unavailable) == {"oidc:later"}
    assert loader.clients == {}

    idp.start()
    try:
        await loader.retry_unavailable()
    finally:
        idp.stop()

    assert loader.unavailable == {}
    assert loader.clients["oidc:later"].app.endpoints.token_url == f"{issuer}/token"
    await loader.clients["oidc:later"].aclose()
