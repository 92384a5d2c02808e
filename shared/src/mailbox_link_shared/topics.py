"""Kafka topic names, and who produces and consumes each.

A topic carries every event about a mailbox for one stage, keyed by the mailbox's normalized
address; the major version is in the name so a breaking change gets a new topic.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Topics:
    """The topic names of one namespace (see ServiceSettings.namespace)."""

    link_requests: str
    verifications: str
    mailboxes: str
    authorizations: str
    user_plans: str
    dead_letters: str

    @classmethod
    def for_namespace(cls, namespace: str) -> "Topics":
        """Returns the topic names used inside the given namespace."""
        return cls(
            link_requests=f"{namespace}.link-requests.v1",
            verifications=f"{namespace}.verifications.v1",
            mailboxes=f"{namespace}.mailboxes.v1",
            authorizations=f"{namespace}.authorizations.v1",
            user_plans=f"{namespace}.user-plans.v1",
            dead_letters=f"{namespace}.dead-letters.v1",
        )

    def for_event(self, event_type: str) -> str:
        """Returns the topic that carries events of the given type."""
        if event_type == "LinkRequested":
            return self.link_requests
        if event_type in ("MailboxVerified", "VerificationFailed"):
            return self.verifications
        if event_type in ("LinkReserved", "MailboxLinked", "LinkRejected", "MailboxUnlinked"):
            return self.mailboxes
        if event_type in ("AuthorizationRequired", "MailboxReconnectRequired"):
            return self.authorizations
        if event_type == "UserPlanChanged":
            return self.user_plans
        raise ValueError(f"no topic carries {event_type!r} events")

    def all(self) -> tuple[str, ...]:
        """Returns every topic name, for creating them at start-up."""
        return (
            self.link_requests,
            self.verifications,
            self.mailboxes,
            self.authorizations,
            self.user_plans,
            self.dead_letters,
        )


TOPIC_DESCRIPTIONS = {
    "link_requests": "LinkRequested, from link-api; consumed by the verifier of its provider type.",
    "verifications": (
        "MailboxVerified or VerificationFailed, from the verifiers; read by registry and link-api."
    ),
    "mailboxes": (
        "LinkReserved, then MailboxLinked or LinkRejected (exactly one per link request), and "
        "MailboxUnlinked, from registry; consumed by link-api and any service that needs to "
        "know which mailboxes are linked."
    ),
    "authorizations": (
        "AuthorizationRequired (the sign-in URL of an OAuth link, after LinkReserved) and "
        "MailboxReconnectRequired (a linked mailbox's tokens stopped working for good), from "
        "oauth-broker; consumed by link-api and registry."
    ),
    "user_plans": "UserPlanChanged, from billing, keyed by user; consumed by registry.",
    "dead_letters": (
        "Records a consumer could not use (undecodable, unknown schema version, or failing "
        "for good), unchanged, with dlq-* headers giving the reason and the source."
    ),
}
