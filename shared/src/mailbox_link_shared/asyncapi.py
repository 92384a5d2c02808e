"""Generates the AsyncAPI document of every topic from the event models.

`make asyncapi` writes it to shared/asyncapi.yaml; a test fails when the checked-in copy is stale.
"""

import sys
from pathlib import Path

import yaml
from faststream.kafka import KafkaBroker
from faststream.specification import AsyncAPI

from mailbox_link_shared.events import (
    AuthorizationEvent,
    LinkRequested,
    MailboxEvent,
    UserPlanChanged,
    VerificationResult,
)
from mailbox_link_shared.topics import TOPIC_DESCRIPTIONS, Topics

DOCUMENT_PATH = Path(__file__).resolve().parents[2] / "asyncapi.yaml"
CONTRACT_VERSION = "1.2.0"


def asyncapi_yaml(namespace: str = "mailbox-link") -> str:
    """Returns the AsyncAPI document of the topics in a namespace, as YAML."""
    topics = Topics.for_namespace(namespace)
    broker = KafkaBroker("kafka:9092", description="mailbox-link events")
    payloads = {
        "link_requests": LinkRequested,
        "verifications": VerificationResult,
        "mailboxes": MailboxEvent,
        "authorizations": AuthorizationEvent,
        "user_plans": UserPlanChanged,
    }
    for role, payload in payloads.items():
        broker.publisher(
            getattr(topics, role),
            title=f"{getattr(topics, role)}:Publish",
            description=TOPIC_DESCRIPTIONS[role],
            schema=payload,
        )
    spec = AsyncAPI(
        broker,
        title="mailbox-link events",
        version=CONTRACT_VERSION,
        description="Every event is keyed by the mailbox's normalized address.",
    )
    # FastStream keeps publishers in a set; sorting makes the document reproducible.
    document = spec.to_specification().to_jsonable()
    return str(yaml.safe_dump(document, sort_keys=True, width=100))


def main() -> None:
    """Writes the document, or with --check exits 1 if the checked-in copy differs."""
    document = asyncapi_yaml()
    if "--check" in sys.argv:
        sys.exit(0 if DOCUMENT_PATH.read_text() == document else 1)
    DOCUMENT_PATH.write_text(document)


if __name__ == "__main__":
    main()
