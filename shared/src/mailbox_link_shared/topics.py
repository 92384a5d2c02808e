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

    @classmethod
    def for_namespace(cls, namespace: str) -> "Topics":
        """Returns the topic names used inside the given namespace."""
        return cls(
            link_requests=f"{namespace}.link-requests.v1",
            verifications=f"{namespace}.verifications.v1",
            mailboxes=f"{namespace}.mailboxes.v1",
        )

    def for_event(self, event_type: str) -> str:
        """Returns the topic that carries events of the given type."""
        if event_type == "LinkRequested":
            return self.link_requests
        if event_type in ("MailboxVerified", "VerificationFailed"):
            return self.verifications
        if event_type in ("MailboxLinked", "LinkRejected", "MailboxUnlinked"):
            return self.mailboxes
        raise ValueError(f"no topic carries {event_type!r} events")

    def all(self) -> tuple[str, ...]:
        """Returns every topic name, for creating them at start-up."""
        return (self.link_requests, self.verifications, self.mailboxes)


TOPIC_DESCRIPTIONS = {
    "link_requests": "LinkRequested, from link-api; consumed by the verifier of its provider type.",
    "verifications": (
        "MailboxVerified or VerificationFailed, from the verifiers; read by registry and link-api."
    ),
    "mailboxes": (
        "MailboxLinked, LinkRejected or MailboxUnlinked, from registry; consumed by link-api "
        "and any service that needs to know which mailboxes are linked."
    ),
}
