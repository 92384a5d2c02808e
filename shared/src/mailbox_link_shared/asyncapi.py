"""Generates the AsyncAPI document of every topic from the event catalogue.

`make contract` writes it to shared/contract/asyncapi.yaml; a test fails when the checked-in copy
is stale. It lives here, not in the contract package, because it needs FastStream.
"""

import sys
from functools import reduce
from operator import or_
from pathlib import Path
from typing import Annotated, Any

import yaml
from faststream.kafka import KafkaBroker
from faststream.specification import AsyncAPI
from pydantic import Field

from mailbox_link_contract import CONTRACT_VERSION
from mailbox_link_contract.topics import CATALOGUE, Topics, TopicSpec

DOCUMENT_PATH = Path(__file__).resolve().parents[2] / "contract" / "asyncapi.yaml"


def asyncapi_yaml(namespace: str = "mailbox-link") -> str:
    """Returns the AsyncAPI document of the topics in a namespace, as YAML."""
    topics = Topics.for_namespace(namespace)
    broker = KafkaBroker("kafka:9092", description="mailbox-link events")
    for spec in CATALOGUE:
        if not spec.events:
            continue  # dead letters: copies of other topics' records, of any shape
        name = topics.name_of(spec)
        broker.publisher(
            name, title=f"{name}:Publish", description=_description(spec), schema=_payload(spec)
        )
    document = AsyncAPI(
        broker,
        title="mailbox-link events",
        version=CONTRACT_VERSION,
        description="Keys, producers, consumers and retention per topic are in each channel's "
        "description; consumers skip event types they do not handle (see the contract "
        "README's compatibility rules).",
    )
    # FastStream keeps publishers in a set; sorting makes the document reproducible.
    jsonable = document.to_specification().to_jsonable()
    return str(yaml.safe_dump(jsonable, sort_keys=True, width=100))


def _payload(spec: TopicSpec) -> Any:
    if len(spec.events) == 1:
        return spec.events[0]
    return Annotated[reduce(or_, spec.events), Field(discriminator="type")]


def _description(spec: TopicSpec) -> str:
    retention = f"{spec.retention.days} days" if spec.retention else "for ever"
    return (
        f"{spec.description} Key: {spec.key}. Producers: {', '.join(spec.producers)}. "
        f"Consumers: {', '.join(spec.consumers) or 'operators'}. Partitions: {spec.partitions}; "
        f"kept {retention}."
    )


def main() -> None:
    """Writes the document, or with --check exits 1 if the checked-in copy differs."""
    document = asyncapi_yaml()
    if "--check" in sys.argv:
        sys.exit(0 if DOCUMENT_PATH.read_text() == document else 1)
    DOCUMENT_PATH.write_text(document)


if __name__ == "__main__":
    main()
