"""The one place that wires the broker together: settings in, a runnable ASGI app out."""

import dataclasses
import functools

from fastapi import FastAPI

from mailbox_link_contract.events import ProviderType, ServerSettings
from mailbox_link_contract.topics import Topics
from mailbox_link_shared.http import CallerKeys, build_http_app
from mailbox_link_shared.kafka import KafkaEventPublisher, ensure_topics, make_broker
from mailbox_link_shared.mongo import make_mongo_client
from oauth_broker.adapters.broker_store import MongoBrokerStore
from oauth_broker.adapters.discovery import apply_discovery, apply_overrides, fetch_discovery
from oauth_broker.adapters.mailbox_check import XOAuth2MailboxCheck
from oauth_broker.adapters.oauth_client import OAuthApp, OAuthClient
from oauth_broker.config import (
    CONFIRM_SCOPE,
    SERVICE_NAME,
    MailServerIn,
    ProviderSettings,
    Settings,
)
from oauth_broker.domain.providers import DEFAULT_ENDPOINTS, ProviderEndpoints
from oauth_broker.entrypoints.events import register_subscribers
from oauth_broker.entrypoints.housekeeping import make_housekeeper
from oauth_broker.entrypoints.http import build_public_router, build_service_router
from oauth_broker.handlers import BrokerDeps, MailServers, OAuthProviderClient

# The endpoint settings an operator may override: ProviderEndpoints' fields that
# ProviderSettings also has.
_OVERRIDABLE = tuple(
    f.name for f in dataclasses.fields(ProviderEndpoints) if f.name in ProviderSettings.model_fields
)


def build_app(settings: Settings) -> FastAPI:
    """Returns the broker; connections open (and discovery documents load) when it starts."""
    topics = Topics.for_namespace(settings.namespace)
    broker = make_broker(settings, SERVICE_NAME)
    mongo = make_mongo_client(settings)
    store = MongoBrokerStore(mongo, f"{settings.namespace}-oauth-broker")
    clients: dict[ProviderType, OAuthProviderClient] = {}
    deps = BrokerDeps(
        store=store,
        publisher=KafkaEventPublisher(broker, topics),
        secret_box=settings.secret_box(),
        clients=clients,
        check_mailbox=XOAuth2MailboxCheck(
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
    )
    consumer = register_subscribers(broker, settings, deps)
    housekeeper = make_housekeeper(deps, settings.housekeeping_interval_seconds)

    async def load_providers() -> None:
        clients.update(await _build_clients(settings))

    async def close_providers() -> None:
        for client in clients.values():
            await client.aclose()

    keys = CallerKeys(settings.caller_keys())
    return build_http_app(
        title="mailbox-link oauth-broker",
        router=build_service_router(deps, keys.require(CONFIRM_SCOPE)),
        keys=keys,
        api_docs=settings.api_docs,
        public_router=build_public_router(
            deps, settings.oauth_return_url, secure_cookie=settings.secure_cookie
        ),
        on_start=[
            load_providers,
            store.create_indexes,
            functools.partial(ensure_topics, settings),
            broker.start,
            consumer.start,
            housekeeper.start,
        ],
        on_stop=[housekeeper.stop, consumer.stop, broker.stop, close_providers, mongo.close],
    )


async def _build_clients(settings: Settings) -> dict[ProviderType, OAuthProviderClient]:
    clients: dict[ProviderType, OAuthProviderClient] = {}
    for provider, configured in settings.providers().items():
        app = OAuthApp(
            provider=provider,
            client_id=configured.client_id,
            client_secret=configured.client_secret,
            redirect_uri=configured.redirect_uri or settings.oauth_redirect_uri,
            endpoints=await _endpoints(provider, configured, settings),
        )
        clients[provider] = OAuthClient(app, settings.oauth_tls(), settings.oauth_timeout_seconds)
    return clients


async def _endpoints(
    provider: ProviderType, configured: ProviderSettings, settings: Settings
) -> ProviderEndpoints:
    endpoints = DEFAULT_ENDPOINTS[provider]
    if configured.discovery_url:
        document = await fetch_discovery(
            configured.discovery_url, settings.oauth_tls(), settings.oauth_timeout_seconds
        )
        endpoints = apply_discovery(endpoints, document)
    return apply_overrides(endpoints, {f: getattr(configured, f) for f in _OVERRIDABLE})


def _mail_servers(settings: Settings) -> dict[ProviderType, MailServers]:
    servers: dict[ProviderType, MailServers] = {}
    for provider, configured in settings.providers().items():
        if configured.imap is not None and configured.smtp is not None:
            servers[provider] = MailServers(_server(configured.imap), _server(configured.smtp))
    return servers


def _server(server: MailServerIn) -> ServerSettings:
    # The username is each mailbox's address, filled in per link.
    return ServerSettings(
        host=server.host, port=server.port, security=server.security, username="-"
    )
