"""Topic settings and `python -m mailbox_link_shared.topics`: plans, checks, and a real Kafka."""

import asyncio
import os
import secrets
import subprocess
import sys
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from pydantic import ValidationError

from localinfra.stack import LocalStack
from mailbox_link_contract.topics import CATALOGUE, Topics
from mailbox_link_shared.settings import KafkaSettings
from mailbox_link_shared.topics import (
    TopicPlan,
    TopicState,
    compare,
    plan_topics,
    prepare_topics,
)


def settings(**values: Any) -> KafkaSettings:
    return KafkaSettings.model_validate(values)


def test_plans_follow_the_catalogue_by_default() -> None:
    plans = {plan.name: plan for plan in plan_topics(settings(namespace="t"))}
    for spec in CATALOGUE:
        plan = plans[f"t.{spec.name}"]
        assert plan.partitions == spec.partitions
        assert plan.replication_factor == 1
        expected = int(spec.retention.total_seconds() * 1000) if spec.retention else -1
        assert plan.configs == {"retention.ms": str(expected)}


def test_plans_take_the_configured_partitions_replication_and_retention() -> None:
    plans = {
        plan.name: plan
        for plan in plan_topics(
            settings(
                namespace="t",
                kafka_replication_factor=3,
                kafka_min_insync_replicas=2,
                kafka_topic_partitions={"link-requests.v1": 12},
                kafka_topic_retention_hours={"dead-letters.v1": 24},
            )
        )
    }
    assert plans["t.link-requests.v1"].partitions == 12
    assert all(plan.replication_factor == 3 for plan in plans.values())
    assert all(plan.configs["min.insync.replicas"] == "2" for plan in plans.values())
    assert plans["t.dead-letters.v1"].configs["retention.ms"] == str(24 * 3_600_000)


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ({"kafka_topic_partitions": {"link-requests": 3}}, "unknown topic 'link-requests'"),
        ({"kafka_topic_partitions": {"link-requests.v1": 0}}, "at least 1"),
        ({"kafka_topic_retention_hours": {"mailboxes.v1": 24}}, "kept for ever"),
        ({"kafka_min_insync_replicas": 2}, "exceeds MBL_KAFKA_REPLICATION_FACTOR"),
        ({"kafka_replication_factor": 0}, "greater than or equal to 1"),
    ],
)
def test_impossible_topic_settings_are_refused_with_the_fix(
    values: dict[str, Any], words: str
) -> None:
    with pytest.raises(ValidationError, match=words):
        settings(**values)


def test_a_topic_with_fewer_partitions_or_other_settings_is_reported_with_the_command() -> None:
    plan = TopicPlan("t.link-requests.v1", 6, 3, {"retention.ms": "604800000"})
    outcome = compare(plan, TopicState(3, 1, {"retention.ms": "1000"}))
    assert outcome.action == "differs"
    text = "\n".join(outcome.differences)
    assert "--partitions 6" in text
    assert "replication factor 1, configured 3" in text
    assert "--add-config retention.ms=604800000" in text


def test_more_partitions_than_configured_is_fine() -> None:
    plan = TopicPlan("t.x", 6, 1, {"retention.ms": "-1"})
    assert compare(plan, TopicState(12, 1, {"retention.ms": "-1"})).action == "ok"


# --- the CLI against the session's real Kafka ---------------------------------------------


def run_cli(bootstrap: str, command: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MBL_")},
        "MBL_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "mailbox_link_shared.topics", command],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def describe(bootstrap: str, namespace: str) -> dict[str, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        names = [n for n in await admin.list_topics() if n.startswith(f"{namespace}.")]
        return {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics(names)}
    finally:
        await admin.close()


@pytest.fixture
def kafka(local_stack: LocalStack) -> str:
    assert local_stack.endpoints is not None
    return local_stack.endpoints.kafka_bootstrap


def test_ensure_creates_every_topic_as_configured_and_then_finds_them_ok(kafka: str) -> None:
    namespace = f"topics-{secrets.token_hex(4)}"
    env = {
        "MBL_NAMESPACE": namespace,
        "MBL_KAFKA_TOPIC_PARTITIONS": '{"link-requests.v1": 8}',
        "MBL_KAFKA_TOPIC_RETENTION_HOURS": '{"dead-letters.v1": 48}',
    }
    first = run_cli(kafka, "ensure", **env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("created") == len(CATALOGUE)
    partitions = asyncio.run(describe(kafka, namespace))
    topics = Topics.for_namespace(namespace)
    assert partitions[topics.link_requests] == 8
    assert partitions[topics.verifications] == 6

    again = run_cli(kafka, "check", **env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("ok") == len(CATALOGUE)
    assert (
        f"{topics.dead_letters}  partitions=3 replication=1 retention.ms=172800000" in again.stdout
    )


def test_check_reports_a_topic_made_differently_and_changes_nothing(kafka: str) -> None:
    namespace = f"topics-{secrets.token_hex(4)}"
    topics = Topics.for_namespace(namespace)

    async def make_a_small_topic() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topics.link_requests, 2, 1)])
        finally:
            await admin.close()

    asyncio.run(make_a_small_topic())
    result = run_cli(kafka, "ensure", MBL_NAMESPACE=namespace)
    assert result.returncode == 1
    assert f"differs  {topics.link_requests}" in result.stdout
    assert f"--topic {topics.link_requests} --partitions 6" in result.stdout
    assert asyncio.run(describe(kafka, namespace))[topics.link_requests] == 2


def test_a_replication_factor_the_cluster_cannot_hold_is_a_clear_error_and_creates_nothing(
    kafka: str,
) -> None:
    namespace = f"topics-{secrets.token_hex(4)}"
    result = run_cli(kafka, "ensure", MBL_NAMESPACE=namespace, MBL_KAFKA_REPLICATION_FACTOR="3")
    assert result.returncode == 2
    assert "MBL_KAFKA_REPLICATION_FACTOR" in result.stderr
    assert asyncio.run(describe(kafka, namespace)) == {}


def test_a_bad_setting_is_a_configuration_error_naming_it(kafka: str) -> None:
    result = run_cli(kafka, "ensure", MBL_KAFKA_TOPIC_PARTITIONS='{"nope.v1": 3}')
    assert result.returncode == 2
    assert "kafka_topic_partitions" in result.stderr
    assert "unknown topic 'nope.v1'" in result.stderr


async def test_a_service_with_topic_creation_off_creates_nothing_and_says_what_to_run(
    kafka: str, caplog: pytest.LogCaptureFixture
) -> None:
    namespace = f"topics-{secrets.token_hex(4)}"
    with caplog.at_level("WARNING", logger="mailbox_link_shared.topics"):
        await prepare_topics(
            settings(namespace=namespace, kafka_bootstrap_servers=kafka, kafka_create_topics=False)
        )
    assert await describe(kafka, namespace) == {}
    assert f"topic {namespace}.link-requests.v1 is missing" in caplog.text
    assert "python -m mailbox_link_shared.topics ensure" in caplog.text
