"""Creates and checks this namespace's topics: `python -m mailbox_link_shared.topics ensure|check`.

What a topic should be comes from the catalogue (shared/contract) and the deployment's settings
(MBL_KAFKA_REPLICATION_FACTOR, _MIN_INSYNC_REPLICAS, _TOPIC_PARTITIONS, _TOPIC_RETENTION_HOURS).
Missing topics are created; existing ones are only compared, never changed: adding partitions
moves mailboxes to other partitions (their events could overtake each other), and a new
replication factor needs a reassignment. Both are an operator's deliberate step, so a
difference is reported with the command that makes it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from pydantic import ValidationError

from mailbox_link_contract.topics import CATALOGUE, Topics
from mailbox_link_shared.settings import KafkaSettings

logger = logging.getLogger(__name__)

TOPIC_ALREADY_EXISTS = 36  # Kafka protocol error code
ADMIN_TIMEOUT_MS = 15_000
MANAGED_CONFIGS = ("retention.ms", "min.insync.replicas")


@dataclass(frozen=True)
class TopicPlan:
    """What one topic should be in this deployment."""

    name: str
    partitions: int
    replication_factor: int
    configs: dict[str, str]


@dataclass(frozen=True)
class TopicState:
    """What one existing topic is."""

    partitions: int
    replication_factor: int
    configs: dict[str, str]


@dataclass
class TopicOutcome:
    """What ``ensure`` or ``check`` found or did for one topic."""

    plan: TopicPlan
    action: str  # "created", "ok", "differs", "missing"
    differences: list[str] = field(default_factory=list)


class TopicsError(RuntimeError):
    """Kafka refused to create a topic; the message says why and what to change."""


def plan_topics(settings: KafkaSettings) -> list[TopicPlan]:
    """Returns every topic of the namespace as the catalogue and settings want it."""
    topics = Topics.for_namespace(settings.namespace)
    plans = []
    for spec in CATALOGUE:
        hours = settings.kafka_topic_retention_hours.get(spec.name)
        if hours is not None:
            retention_ms = hours * 3_600_000
        elif spec.retention is not None:
            retention_ms = int(spec.retention.total_seconds() * 1000)
        else:
            retention_ms = -1
        configs = {"retention.ms": str(retention_ms)}
        if settings.kafka_min_insync_replicas is not None:
            configs["min.insync.replicas"] = str(settings.kafka_min_insync_replicas)
        plans.append(
            TopicPlan(
                name=topics.name_of(spec),
                partitions=settings.kafka_topic_partitions.get(spec.name, spec.partitions),
                replication_factor=settings.kafka_replication_factor,
                configs=configs,
            )
        )
    return plans


def compare(plan: TopicPlan, state: TopicState | None) -> TopicOutcome:
    """Says how an existing topic differs from its plan, with the command that would fix it."""
    if state is None:
        return TopicOutcome(plan, "missing")
    differences = []
    if state.partitions < plan.partitions:
        differences.append(
            f"{state.partitions} partitions, configured {plan.partitions} (adding partitions "
            f"re-homes mailboxes: drain the consumers, then kafka-topics.sh --alter --topic "
            f"{plan.name} --partitions {plan.partitions})"
        )
    if state.replication_factor != plan.replication_factor:
        differences.append(
            f"replication factor {state.replication_factor}, configured "
            f"{plan.replication_factor} (kafka-reassign-partitions.sh)"
        )
    for name, wanted in plan.configs.items():
        if state.configs.get(name) not in (None, wanted):
            differences.append(
                f"{name}={state.configs[name]}, configured {wanted} (kafka-configs.sh --alter "
                f"--entity-type topics --entity-name {plan.name} --add-config {name}={wanted})"
            )
    return TopicOutcome(plan, "differs" if differences else "ok", differences)


async def ensure_topics(settings: KafkaSettings, *, create: bool = True) -> list[TopicOutcome]:
    """Creates the missing topics (unless `create` is false) and compares the others."""
    plans = plan_topics(settings)
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap_servers, request_timeout_ms=ADMIN_TIMEOUT_MS
    )
    await admin.start()
    try:
        states = await _describe(admin, [plan.name for plan in plans])
        outcomes = [compare(plan, states.get(plan.name)) for plan in plans]
        missing = [outcome for outcome in outcomes if outcome.action == "missing"]
        if create and missing:
            await _create(admin, [outcome.plan for outcome in missing])
            for outcome in missing:
                outcome.action = "created"
        return outcomes
    finally:
        await admin.close()


async def prepare_topics(settings: KafkaSettings) -> None:
    """At a service's start-up: ensure (or, when creation is off, check) and log differences."""
    outcomes = await ensure_topics(settings, create=settings.kafka_create_topics)
    for outcome in outcomes:
        if outcome.action == "missing":
            logger.warning(
                "topic %s is missing and MBL_KAFKA_CREATE_TOPICS is false: run "
                "`python -m mailbox_link_shared.topics ensure`",
                outcome.plan.name,
            )
        for difference in outcome.differences:
            logger.warning("topic %s: %s", outcome.plan.name, difference)


async def _describe(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, TopicState]:
    existing = set(await admin.list_topics()) & set(names)
    if not existing:
        return {}
    described = await admin.describe_topics(sorted(existing))
    configs = await _configs(admin, sorted(existing))
    states = {}
    for topic in described:
        partitions = topic["partitions"]
        replicas = max((len(p["replicas"]) for p in partitions), default=0)
        states[topic["topic"]] = TopicState(
            len(partitions), replicas, configs.get(topic["topic"], {})
        )
    return states


async def _configs(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, dict[str, str]]:
    resources = [
        ConfigResource(ConfigResourceType.TOPIC, name, configs=dict.fromkeys(MANAGED_CONFIGS))
        for name in names
    ]
    found: dict[str, dict[str, str]] = {}
    for response in await admin.describe_configs(resources):
        for resource in response.to_object()["resources"]:
            found[resource["resource_name"]] = {
                entry["config_names"]: entry["config_value"]
                for entry in resource["config_entries"]
                if entry["config_value"] is not None
            }
    return found


async def _create(admin: AIOKafkaAdminClient, plans: list[TopicPlan]) -> None:
    new_topics = [
        NewTopic(plan.name, plan.partitions, plan.replication_factor, topic_configs=plan.configs)
        for plan in plans
    ]
    with contextlib.suppress(TopicAlreadyExistsError):  # another replica created them meanwhile
        response = await admin.create_topics(new_topics, timeout_ms=ADMIN_TIMEOUT_MS)
        refused = [
            (name, code, message)
            for name, code, message in _topic_errors(response)
            if code not in (0, TOPIC_ALREADY_EXISTS)
        ]
        if refused:
            raise TopicsError(
                "Kafka refused to create "
                + "; ".join(f"{name} (error {code}: {message})" for name, code, message in refused)
                + ": check MBL_KAFKA_REPLICATION_FACTOR against the number of brokers and "
                "MBL_KAFKA_MIN_INSYNC_REPLICAS against the replication factor"
            )


def _topic_errors(response: object) -> list[tuple[str, int, str]]:
    """(topic, error code, message) of a CreateTopics answer, whatever its version."""
    errors = []
    for entry in getattr(response, "topic_errors", ()):
        name, code = entry[0], entry[1]
        message = entry[2] if len(entry) > 2 and entry[2] else ""
        errors.append((str(name), int(code), str(message)))
    return errors


def _print(outcomes: Sequence[TopicOutcome]) -> None:
    for outcome in outcomes:
        plan = outcome.plan
        retention = plan.configs["retention.ms"]
        print(
            f"{outcome.action:8} {plan.name}  partitions={plan.partitions} "
            f"replication={plan.replication_factor} retention.ms={retention}"
        )
        for difference in outcome.differences:
            print(f"         ! {difference}")


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: 0 when every topic is as configured, 1 when one is missing or differs, 2 on errors."""
    parser = argparse.ArgumentParser(
        prog="python -m mailbox_link_shared.topics", description=__doc__
    )
    parser.add_argument("command", choices=("ensure", "check"))
    args = parser.parse_args(argv)
    try:
        settings = KafkaSettings()
    except ValidationError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        return 2
    try:
        outcomes = asyncio.run(ensure_topics(settings, create=args.command == "ensure"))
    except (KafkaError, TopicsError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    _print(outcomes)
    return 0 if all(outcome.action in ("ok", "created") for outcome in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
