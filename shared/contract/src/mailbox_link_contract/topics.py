"""The event catalogue: every topic, the event types it carries, its key, who writes and who
reads it, and how Kafka keeps it.

This table is the one place that knows which event travels where. Topic lookup, the services'
subscriptions, the AsyncAPI document, the JSON Schemas, the contract tests and the README's
topics table are derived from it or checked against it. A topic's major version is in its name:
a breaking change gets a new topic (shared/contract/README.md, "Compatibility").
"""

from dataclasses import dataclass, fields
from datetime import timedelta

from mailbox_link_contract.events import (
    AuthorizationRequired,
    Envelope,
    LinkRejected,
    LinkRequested,
    LinkReserved,
    MailboxChecked,
    MailboxCheckRequested,
    MailboxHealthChanged,
    MailboxLinked,
    MailboxReconnected,
    MailboxReconnectRequired,
    MailboxUnlinked,
    MailboxVerified,
    UserPlanChanged,
    VerificationFailed,
)

# Our services, by the name they consume under (their consumer group is <namespace>.<name>).
LINK_API = "link-api"
IMAP_VERIFIER = "imap-verifier"
REGISTRY = "registry"
OAUTH_BROKER = "oauth-broker"
SERVICES = (LINK_API, IMAP_VERIFIER, REGISTRY, OAUTH_BROKER)

BY_MAILBOX = "the mailbox's normalized address (its events stay in order)"
FOREVER = None
# Six partitions per link topic: one, two, three or six replicas of a consumer each get an
# equal share (with three, two replicas would split the work 2:1).
LINK_PARTITIONS = 6


@dataclass(frozen=True)
class TopicSpec:
    """One topic of the contract."""

    role: str  # the attribute of Topics that names it
    name: str  # without the namespace
    events: tuple[type[Envelope], ...]
    key: str
    producers: tuple[str, ...]
    consumers: tuple[str, ...]  # our services; anyone else may read any topic but dead letters
    partitions: int
    retention: timedelta | None  # None: kept for ever (readers rebuild their views from it)
    description: str

    @property
    def event_types(self) -> tuple[str, ...]:
        """The `type` names of the events on this topic."""
        return tuple(event_type_of(model) for model in self.events)


CATALOGUE: tuple[TopicSpec, ...] = (
    TopicSpec(
        role="link_requests",
        name="link-requests.v1",
        events=(LinkRequested,),
        key=BY_MAILBOX,
        producers=(LINK_API,),
        consumers=(IMAP_VERIFIER, OAUTH_BROKER, REGISTRY),
        partitions=LINK_PARTITIONS,
        retention=timedelta(days=7),
        description="LinkRequested, from link-api; verified by the verifier of its `auth` "
        "(imap-verifier: password, oauth-broker: oauth); the registry reserves the address.",
    ),
    TopicSpec(
        role="verifications",
        name="verifications.v1",
        events=(MailboxVerified, VerificationFailed),
        key=BY_MAILBOX,
        producers=(IMAP_VERIFIER, OAUTH_BROKER),
        consumers=(REGISTRY, LINK_API),
        partitions=LINK_PARTITIONS,
        retention=timedelta(days=7),
        description="MailboxVerified or VerificationFailed, from the verifiers.",
    ),
    TopicSpec(
        role="mailboxes",
        name="mailboxes.v1",
        events=(
            LinkReserved,
            MailboxLinked,
            LinkRejected,
            MailboxReconnected,
            MailboxUnlinked,
            MailboxHealthChanged,
        ),
        key=BY_MAILBOX,
        producers=(REGISTRY,),
        consumers=(LINK_API, IMAP_VERIFIER, OAUTH_BROKER),
        partitions=LINK_PARTITIONS,
        retention=FOREVER,
        description="LinkReserved, then exactly one MailboxLinked, MailboxReconnected (a "
        "reconnect of the owner's mailbox) or LinkRejected per link request, and "
        "MailboxUnlinked, from the registry; for any service that needs to know which "
        "mailboxes are linked. Since 1.6.0 also MailboxHealthChanged (a linked mailbox became "
        "active, degraded or reconnect_required).",
    ),
    TopicSpec(
        role="authorizations",
        name="authorizations.v1",
        events=(AuthorizationRequired, MailboxReconnectRequired),
        key=BY_MAILBOX,
        producers=(OAUTH_BROKER,),
        consumers=(LINK_API, REGISTRY),
        partitions=LINK_PARTITIONS,
        retention=timedelta(days=7),
        description="AuthorizationRequired (an OAuth link's sign-in URL, only after "
        "LinkReserved) and MailboxReconnectRequired (a linked mailbox's tokens stopped working "
        "for good), from the oauth-broker.",
    ),
    TopicSpec(
        role="mailbox_checks",
        name="mailbox-checks.v1",
        events=(MailboxCheckRequested, MailboxChecked),
        key=BY_MAILBOX,
        producers=(REGISTRY, IMAP_VERIFIER, OAUTH_BROKER),
        consumers=(IMAP_VERIFIER, OAUTH_BROKER, REGISTRY),
        partitions=LINK_PARTITIONS,
        retention=timedelta(days=1),
        description="Since 1.6.0: MailboxCheckRequested, from the registry (a linked mailbox's "
        "scheduled or on-demand health check; the verifier of its `auth` runs it), and "
        "MailboxChecked, its result, from that verifier.",
    ),
    TopicSpec(
        role="user_plans",
        name="user-plans.v1",
        events=(UserPlanChanged,),
        key="the user, as <account_id>/<user_id> (one user's changes stay in order)",
        producers=("billing",),
        consumers=(REGISTRY,),
        partitions=LINK_PARTITIONS,
        retention=FOREVER,
        description="UserPlanChanged, from billing; the registry applies the plan's limit.",
    ),
    TopicSpec(
        role="dead_letters",
        name="dead-letters.v1",
        events=(),
        key="the source record's key",
        producers=SERVICES,
        consumers=(),
        partitions=3,
        retention=timedelta(days=30),
        description="Records a consumer could not read (not JSON, no envelope, an unknown "
        "schema version of a type it handles) or failed on for good, unchanged, with dlq-* "
        "headers giving the reason, the source and the consumer group; for operators.",
    ),
)


def event_type_of(model: type[Envelope]) -> str:
    """Returns the `type` an event model carries (its class name, by convention and test)."""
    default = model.model_fields["type"].default
    if not isinstance(default, str):  # pragma: no cover - every model sets its type
        raise TypeError(f"{model.__name__} has no default type")
    return default


EVENT_MODELS: dict[str, type[Envelope]] = {
    event_type_of(model): model for spec in CATALOGUE for model in spec.events
}
_TOPIC_OF_EVENT = {event_type: spec for spec in CATALOGUE for event_type in spec.event_types}


def spec_of(role: str) -> TopicSpec:
    """Returns the catalogue's entry for a topic role."""
    return next(spec for spec in CATALOGUE if spec.role == role)


def topics_consumed_by(service: str) -> tuple[TopicSpec, ...]:
    """Returns the topics one of our services reads, as the catalogue says."""
    return tuple(spec for spec in CATALOGUE if service in spec.consumers)


def event_types_consumed_by(service: str) -> frozenset[str]:
    """Returns the `type` names of every event on the topics one of our services reads."""
    return frozenset(t for spec in topics_consumed_by(service) for t in spec.event_types)


@dataclass(frozen=True)
class Topics:
    """The topic names of one namespace (see ServiceSettings.namespace); one field per role."""

    link_requests: str
    verifications: str
    mailboxes: str
    authorizations: str
    mailbox_checks: str
    user_plans: str
    dead_letters: str

    @classmethod
    def for_namespace(cls, namespace: str) -> "Topics":
        """Returns the topic names used inside the given namespace."""
        return cls(**{spec.role: f"{namespace}.{spec.name}" for spec in CATALOGUE})

    def name_of(self, spec: TopicSpec) -> str:
        """Returns the full name of a catalogued topic in this namespace."""
        name: str = getattr(self, spec.role)
        return name

    def for_event(self, event_type: str) -> str:
        """Returns the topic that carries events of the given type."""
        spec = _TOPIC_OF_EVENT.get(event_type)
        if spec is None:
            raise ValueError(f"no topic carries {event_type!r} events")
        return self.name_of(spec)

    def all(self) -> tuple[str, ...]:
        """Returns every topic name, for creating them at start-up."""
        return tuple(getattr(self, f.name) for f in fields(self))
