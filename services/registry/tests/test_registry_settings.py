"""The registry refuses settings under which a replayed link event would find no link."""

from typing import Any

import pytest
from pydantic import ValidationError

from registry.config import Settings

KEYS = {"encryption_keys": {"k1": "a" * 43 + "="}}


def registry_settings(**values: Any) -> Settings:
    return Settings.model_validate({**KEYS, **values})


def test_link_topics_kept_longer_than_links_are_refused_with_both_settings_named() -> None:
    with pytest.raises(ValidationError, match="MBL_KAFKA_TOPIC_RETENTION_HOURS"):
        registry_settings(kafka_topic_retention_hours={"link-requests.v1": 10 * 24})


def test_link_retention_raised_with_the_topics_is_accepted() -> None:
    settings = registry_settings(
        kafka_topic_retention_hours={"link-requests.v1": 10 * 24},
        link_retention_seconds=11 * 24 * 3600,
    )
    assert settings.link_retention.days == 11


def test_health_checks_default_to_six_hours_and_take_one_second_intervals_for_tests(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    defaults = registry_settings().health_policy()
    assert defaults.interval.total_seconds() == 6 * 3600
    assert (defaults.jitter, defaults.auth_failures, defaults.batch) == (0.2, 2, 50)
    assert defaults.retry.total_seconds() == 60
    for name, value in {
        "HEALTH_CHECK_INTERVAL_SECONDS": "1",
        "HEALTH_RETRY_SECONDS": "1",
        "HEALTH_SCHEDULER_INTERVAL_SECONDS": "1",
        "HEALTH_AUTH_FAILURES": "3",
        "HEALTH_CHECK_BATCH": "5",
        "HEALTH_CHECK_JITTER": "0",
    }.items():
        monkeypatch.setenv(f"MBL_{name}", value)
    settings = registry_settings()
    policy = settings.health_policy()
    assert policy.interval.total_seconds() == 1
    assert policy.retry.total_seconds() == 1
    assert settings.health_scheduler_interval_seconds == 1
    assert (policy.jitter, policy.auth_failures, policy.batch) == (0.0, 3, 5)


def test_a_zero_interval_turns_scheduled_checks_off() -> None:
    assert not registry_settings(health_check_interval_seconds=0).health_policy().scheduled
