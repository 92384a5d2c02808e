"""The one place that wires the verifier together: settings in, a runnable ASGI app out."""

import functools

from faststream.asgi import AsgiFastStream, make_ping_asgi

from imap_verifier.config import SERVICE_NAME, Settings
from imap_verifier.entrypoints.events import register_subscribers
from imap_verifier.ports import VerifierDeps
from mailbox_link_contract.topics import Topics
from mailbox_link_shared.kafka import KafkaEventPublisher, ensure_topics, make_broker
from mailbox_link_shared.mail_probes import probe_imap, probe_smtp
from mailbox_link_shared.mail_resolver import resolve_endpoint


def build_app(settings: Settings) -> AsgiFastStream:
    """Returns the verifier: a Kafka consumer with a /healthz endpoint."""
    topics = Topics.for_namespace(settings.namespace)
    broker = make_broker(settings, SERVICE_NAME)
    deps = VerifierDeps(
        publisher=KafkaEventPublisher(broker, topics),
        secret_box=settings.secret_box(),
        resolve=resolve_endpoint,
        probe_imap=probe_imap,
        probe_smtp=probe_smtp,
        tls=settings.mail_tls(),
        allowlist=settings.allowlist(),
        timeout=settings.verifier_timeout_seconds,
    )
    register_subscribers(broker, settings, deps)

    return AsgiFastStream(
        broker,
        asgi_routes=[("/healthz", make_ping_asgi(broker, timeout=5.0, include_in_schema=False))],
        on_startup=[functools.partial(ensure_topics, settings)],
    )
