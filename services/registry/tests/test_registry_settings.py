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
