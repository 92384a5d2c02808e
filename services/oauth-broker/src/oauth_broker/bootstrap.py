"""The one place that wires the broker together: settings in, a runnable ASGI app out."""

import dataclasses
import functools
import logging

import httpx2
from fastapi import APIRouter, FastAPI

from mailbox_link_contract.events import ProviderType, ServerSettings
from mailbox_link_contract.topics import Topics
from mailbox_link_shared.health import Readiness, kafka_check, mongo_check, running_check
from mailbox_link_shared.http import CallerKeys, build_http_app
from mailbox_link_shared.kafka import KafkaEventPublisher, make_broker
from mailbox_link_shared.mongo import make_mongo_client
from mailbox_link_shared.oidc_providers import OidcMailServer
from mailbox_link_shared.scopes import Scope
from mailbox_link_shared.timer import PeriodicTask
from mailbox_link_shared.topics import prepare_topics
from oauth_broker.adapters.broker_store import MongoBrokerStore
from oauth_broker.adapters.discovery import (
    REQUIRED_FOR_OIDC,
    DiscoveryRefused,
    apply_discovery,
    apply_overrides,
    check_issuer,
    expected_issuer,
    fetch_discovery,
    require_endpoints,
)
from oauth_broker.adapters.mailbox_check import SUPPORTED_MECHANISMS, OAuthMailboxCheck
from oauth_broker.adapters.oauth_client import OAuthApp, OAuthClient
from oauth_broker.config import (
    CONFIRM_SCOPE,
    SERVICE_NAME,
    MailServerIn,
    OidcProviderSettings,
    ProviderSettings,
    Settings,
)
from oauth_broker.domain.providers import (
    DEFAULT_ENDPOINTS,
    MailboxProfile,
    ProviderEndpoints,
    ProviderKey,
    provider_key,
)
from oauth_broker.entrypoints.events import register_subscribers
from oauth_broker.entrypoints.housekeeping import make_housekeeper
from oauth_broker.entrypoints.http import build_public_router, build_service_router
from oauth_broker.entrypoints.token_http import build_token_router
from oauth_broker.handlers import BrokerDeps, MailServers, OAuthProviderClient

logger = logging.getLogger(__name__)
# The endpoint settings an operator may override: ProviderEndpoints' fields that
# ProviderSettings also has (token_endpoint_auth_method is mapped by name).
_OVERRIDABLE = tuple(
    f.name for f in dataclasses.fields(ProviderEndpoints) if f.name in ProviderSettings.model_fields
)
# Why a provider could not be loaded: its discovery failed or was refused.
_LOAD_FAILURES = (DiscoveryRefused, httpx2.HTTPError, ValueError)


def build_app(settings: Settings) -> FastAPI:
    """Returns the broker; connections open (and discovery documents load) when it starts."""
    topics = Topics.for_namespace(settings.namespace)
    broker = make_broker(settings, SERVICE_NAME)
    mongo = make_mongo_client(settings)
    store = MongoBrokerStore(mongo, f"{settings.namespace}-oauth-broker")
    clients: dict[ProviderKey, OAuthProviderClient] = {}
    unavailable: dict[ProviderKey, str] = {}
    deps = BrokerDeps(
        store=store,
        publisher=KafkaEventPublisher(broker, topics),
        secret_box=settings.secret_box(),
        clients=clients,
        check_mailbox=OAuthMailboxCheck(
            settings.mail_tls(),
            settings.allowlist(),
            settings.verifier_timeout_seconds,
            settings.allowed_ports(),
        ),
        session_lifetime=settings.session_lifetime,
        refresh_margin=settings.refresh_margin,
        refresh_backoff=settings.refresh_backoff,
        mail_servers=_mail_servers(settings),
        start_url=settings.start_url,
        confirm_lifetime=settings.confirm_lifetime,
        unavailable=unavailable,
    )
    consumer = register_subscribers(broker, settings, deps)
    housekeeper = make_housekeeper(deps, settings.housekeeping_interval_seconds)

    providers = ProviderLoader(settings, clients, unavailable)
    # A provider that could not be loaded (its IdP down at start, its document fixed later) is
    # tried again every so often: its links work again without a restart.
    reloader = PeriodicTask(
        "oauth-broker-providers", settings.oauth_provider_retry_seconds, providers.retry_unavailable
    )

    async def close_providers() -> None:
        for client in clients.values():
            await client.aclose()

    keys = CallerKeys(settings.caller_keys())
    service_router = APIRouter()
    service_router.include_router(build_service_router(deps, keys.require(CONFIRM_SCOPE)))
    # --- issue 17, access: the registry's internal token route (docs/adr/0023) ---
    service_router.include_router(build_token_router(deps, keys.require(Scope.TOKEN_ISSUE)))
    return build_http_app(
        title="mailbox-link oauth-broker",
        router=service_router,
        keys=keys,
        api_docs=settings.api_docs,
        readiness=Readiness(
            {
                "kafka": kafka_check(broker),
                "mongodb": mongo_check(mongo),
                "consumer": running_check(consumer),
            }
        ),
        public_router=build_public_router(
            deps, settings.oauth_return_url, secure_cookie=settings.secure_cookie
        ),
        on_start=[
            providers.load_all,
            store.create_indexes,
            functools.partial(prepare_topics, settings),
            broker.start,
            consumer.start,
            housekeeper.start,
            reloader.start,
        ],
        on_stop=[
            reloader.stop,
            housekeeper.stop,
            consumer.stop,
            broker.stop,
            close_providers,
            mongo.close,
        ],
    )


async def _build_clients(
    settings: Settings,
    clients: dict[ProviderKey, OAuthProviderClient],
    unavailable: dict[ProviderKey, str],
) -> None:
    """Builds a client per configured provider into `clients`; why one could not be, into
    `unavailable`."""
    await ProviderLoader(settings, clients, unavailable).load_all()


@dataclasses.dataclass
class ProviderLoader:
    """Builds a client per configured provider. One that cannot be loaded (discovery failed
    or refused, no credentials) is logged for operators and left out: its links fail
    deployment_misconfigured, and the other providers work."""

    settings: Settings
    clients: dict[ProviderKey, OAuthProviderClient]
    unavailable: dict[ProviderKey, str]

    async def load_all(self) -> None:
        """Loads every configured provider."""
        for key in self._configured():
            await self._load(key)

    async def retry_unavailable(self) -> None:
        """Tries again the providers that could not be loaded."""
        for key in list(self.unavailable):
            await self._load(key)

    def _configured(self) -> list[ProviderKey]:
        built_in = [provider_key(provider, None) for provider in self.settings.providers()]
        return built_in + list(self.settings.oidc())

    async def _load(self, key: ProviderKey) -> None:
        built = await self._build(key)
        if isinstance(built, str):
            if self.unavailable.get(key) != built:  # logged once per reason, not every retry
                logger.error("provider %s not loaded, its links will fail: %s", key, built)
            self.unavailable[key] = built
            return
        self.clients[key] = built
        if self.unavailable.pop(key, None) is not None:
            logger.info("provider %s loaded: its links work again", key)

    async def _build(self, key: ProviderKey) -> OAuthClient | str:
        settings = self.settings
        oidc = settings.oidc()
        if key in oidc:
            name, configured_oidc = oidc[key]
            return await _oidc_client(name, configured_oidc, settings)
        provider = ProviderType(key)
        configured = settings.providers()[provider]
        try:
            endpoints = await _endpoints(provider, configured, settings)
        except _LOAD_FAILURES as exc:
            return str(exc) or type(exc).__name__
        app = OAuthApp(
            provider=provider,
            client_id=configured.client_id,
            client_secret=configured.client_secret,
            redirect_uri=configured.redirect_uri or settings.oauth_redirect_uri,
            endpoints=endpoints,
        )
        return OAuthClient(app, settings.oauth_tls(), settings.oauth_timeout_seconds)


async def _oidc_client(
    name: str, oidc: OidcProviderSettings, settings: Settings
) -> OAuthClient | str:
    """Returns the provider's client, or why it cannot have one."""
    if not oidc.configured:
        return "no client_id and client_secret configured"
    if oidc.sasl_mechanism not in SUPPORTED_MECHANISMS:
        return f"this build cannot log in to mail servers with {oidc.sasl_mechanism.value}"
    try:
        endpoints = await _oidc_endpoints(oidc, settings)
    except _LOAD_FAILURES as exc:
        return str(exc) or type(exc).__name__
    method = endpoints.token_auth_method
    supported = endpoints.token_auth_methods_supported
    if method is not None and supported and method.value not in supported:
        logger.warning(
            "OIDC provider %s: token_endpoint_auth_method %s is not among those its discovery "
            "document supports (%s)", name, method.value, ", ".join(supported),
        )  # fmt: skip
    app = OAuthApp(
        provider=ProviderType.OIDC,
        client_id=oidc.client_id,
        client_secret=oidc.client_secret,
        redirect_uri=oidc.redirect_uri or settings.oauth_redirect_uri,
        endpoints=endpoints,
    )
    return OAuthClient(app, settings.oauth_tls(), settings.oauth_timeout_seconds)


async def _oidc_endpoints(oidc: OidcProviderSettings, settings: Settings) -> ProviderEndpoints:
    """A generic provider's endpoints: all from its discovery document, whose issuer must be
    the configured one."""
    document = await fetch_discovery(
        oidc.discovery_document_url, settings.oauth_tls(), settings.oauth_timeout_seconds
    )
    check_issuer(document, oidc.issuer)
    require_endpoints(document, REQUIRED_FOR_OIDC)
    configured = ProviderEndpoints(
        authorize_url="",
        token_url="",
        userinfo_url="",
        jwks_url="",
        issuer=oidc.issuer,
        revocation_url=None,
        profile=MailboxProfile.USERINFO,
        profile_url=None,
        scopes=oidc.scopes,
        mail_scopes=oidc.mail_scopes,
        authorize_params=tuple(oidc.authorize_params.items()),
        prompt=oidc.prompt,
        offline_access=oidc.offline_access,
        token_auth_method=oidc.token_endpoint_auth_method,
        require_id_token=oidc.require_id_token,
        email_claim=oidc.email_claim,
    )
    return apply_discovery(configured, document)


async def _endpoints(
    provider: ProviderType, configured: ProviderSettings, settings: Settings
) -> ProviderEndpoints:
    endpoints = DEFAULT_ENDPOINTS[provider]
    if configured.discovery_url:
        document = await fetch_discovery(
            configured.discovery_url, settings.oauth_tls(), settings.oauth_timeout_seconds
        )
        # Microsoft's multi-tenant issuer (None) stays unchecked unless one is configured.
        expected = configured.issuer or (
            expected_issuer(None, configured.discovery_url) if endpoints.issuer else None
        )
        if expected is not None:
            check_issuer(document, expected)
        endpoints = apply_discovery(endpoints, document)
    overrides = {f: getattr(configured, f) for f in _OVERRIDABLE}
    overrides["token_auth_method"] = configured.token_endpoint_auth_method
    return apply_overrides(endpoints, overrides)


def _mail_servers(settings: Settings) -> dict[ProviderKey, MailServers]:
    servers: dict[ProviderKey, MailServers] = {}
    for provider, configured in settings.providers().items():
        if configured.imap is not None and configured.smtp is not None:
            servers[provider_key(provider, None)] = MailServers(
                _server(configured.imap), _server(configured.smtp)
            )
    for key, (_, oidc) in settings.oidc().items():
        servers[key] = MailServers(_server(oidc.imap), _server(oidc.smtp), oidc.sasl_mechanism)
    return servers


def _server(server: MailServerIn | OidcMailServer) -> ServerSettings:
    # The username is each mailbox's address, filled in per link.
    return ServerSettings(
        host=server.host, port=server.port, security=server.security, username="-"
    )
