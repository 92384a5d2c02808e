"""The one place that wires the verifier together: settings in, a runnable ASGI app out."""

import functools

from faststream.asgi import AsgiFastStream

from imap_verifier.adapters.pending_store import MongoPendingStore
from imap_verifier.adapters.proof_mail import RelayProofSender
from imap_verifier.config import SERVICE_NAME, Settings
from imap_verifier.domain.ownership import ProofPolicy
from imap_verifier.entrypoints.events import register_subscribers
from imap_verifier.entrypoints.housekeeping import make_expiry_sweep
from imap_verifier.login_limits import LoginLimits
from imap_verifier.ports import OwnershipProof, VerifierDeps
from mailbox_link_contract.topics import Topics
from mailbox_link_shared.health import (
    BackgroundStart,
    Readiness,
    kafka_check,
    livez_asgi,
    mongo_check,
    readyz_asgi,
    running_check,
)
from mailbox_link_shared.kafka import KafkaEventPublisher, make_broker
from mailbox_link_shared.mail_probes import probe_imap, probe_smtp
from mailbox_link_shared.mail_resolver import resolve_endpoint
from mailbox_link_shared.metrics import metrics_asgi
from mailbox_link_shared.mongo import make_mongo_client
from mailbox_link_shared.rate_limit_store import MongoSlots, make_slot_sweep, rate_limit_database
from mailbox_link_shared.rate_limits import RateLimiter
from mailbox_link_shared.topics import prepare_topics
from mailbox_link_shared.tracing import flush_tracing


def build_app(settings: Settings) -> AsgiFastStream:
    """Returns the verifier: a Kafka consumer with /livez (and /healthz) and /readyz."""
    topics = Topics.for_namespace(settings.namespace)
    broker = make_broker(settings, SERVICE_NAME)
    mongo = make_mongo_client(settings)
    store = MongoPendingStore(
        mongo, f"{settings.namespace}-imap-verifier", settings.pending_lifetime
    )
    relay = settings.ownership_relay_host
    sender = (
        RelayProofSender(relay, settings.ownership_relay_port, settings.verifier_timeout_seconds)
        if relay
        else None
    )
    slots = MongoSlots(mongo, rate_limit_database(settings.namespace))
    login_limits = LoginLimits(
        RateLimiter(slots),
        settings.login_limit(),
        settings.host_limit(),
        settings.back_off(),
        settings.hosts_without_host_budget(),
    )
    deps = VerifierDeps(
        publisher=KafkaEventPublisher(broker, topics),
        secret_box=settings.secret_box(),
        resolve=functools.partial(resolve_endpoint, allowed_ports=settings.allowed_ports()),
        probe_imap=probe_imap,
        probe_smtp=probe_smtp,
        tls=settings.mail_tls(),
        allowlist=settings.allowlist(),
        timeout=settings.verifier_timeout_seconds,
        store=store,
        proof=OwnershipProof(
            sender=sender,
            policy=ProofPolicy(deadline=settings.ownership_proof_deadline_seconds),
            from_address=settings.ownership_proof_from,
            product=settings.ownership_proof_product,
        ),
        login_limits=login_limits,
    )
    consumer = register_subscribers(broker, settings, deps)
    sweep = make_expiry_sweep(store.delete_expired, settings.expiry_sweep_interval_seconds)
    slot_sweep = make_slot_sweep(slots, settings.rate_limit_sweep_interval_seconds)

    # Kafka or MongoDB may be away at start: the steps run in the background, retried, and
    # /readyz is 503 until they all ran (health.py). The consumer publishes through the
    # broker: it starts after it and stops before.
    start_up = BackgroundStart(
        SERVICE_NAME,
        [
            store.create_indexes,
            slots.create_indexes,
            functools.partial(prepare_topics, settings),
            broker.start,
            sweep.start,
            slot_sweep.start,
            consumer.start,
        ],
    )
    readiness = Readiness(
        {
            "kafka": kafka_check(broker),
            "mongodb": mongo_check(mongo),
            "consumer": running_check(consumer),
            "started": start_up.started,
        }
    )
    live = livez_asgi()
    return _BackgroundStartApp(
        broker,
        asgi_routes=[
            ("/livez", live),
            ("/healthz", live),
            ("/readyz", readyz_asgi(readiness)),
            ("/metrics", metrics_asgi),
        ],
        on_startup=[start_up.start],
        on_shutdown=[
            start_up.stop,
            consumer.stop,
            sweep.stop,
            slot_sweep.stop,
            mongo.close,
            flush_tracing,
        ],
    )


class _BackgroundStartApp(AsgiFastStream):
    """The FastStream app, whose broker is started by the background start-up instead of
    before the server answers (where Kafka being away would end the process)."""

    async def _start_broker(self) -> None:
        return None
