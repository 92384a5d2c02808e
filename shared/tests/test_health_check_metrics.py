"""The health-check metrics (issue 17): counted and timed by verifier and outcome, both labels
bounded whatever a caller passes."""

from prometheus_client import REGISTRY

from mailbox_link_contract.failures import FailureCode
from mailbox_link_shared import metrics


def _count(verifier: str, outcome: str) -> float:
    labels = {"verifier": verifier, "outcome": outcome}
    return REGISTRY.get_sample_value("mailbox_link_health_checks_total", labels) or 0.0


def _timed(verifier: str, outcome: str) -> float:
    labels = {"verifier": verifier, "outcome": outcome}
    name = "mailbox_link_health_check_duration_seconds_count"
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_check_is_counted_and_timed_by_verifier_and_outcome() -> None:
    before = _count("oauth-broker", "ok"), _timed("oauth-broker", "ok")
    metrics.health_check_finished("oauth-broker", None, 0.05)
    assert (_count("oauth-broker", "ok"), _timed("oauth-broker", "ok")) == (
        before[0] + 1, before[1] + 1,
    )  # fmt: skip
    failed = _count("imap-verifier", "imap_auth_failed")
    metrics.health_check_finished("imap-verifier", FailureCode.IMAP_AUTH_FAILED, 0.5)
    assert _count("imap-verifier", "imap_auth_failed") == failed + 1


def test_unknown_values_never_become_labels() -> None:
    internal = _count("imap-verifier", "internal_error")
    metrics.health_check_finished("alice@example.org", "a server's free text", 0.1)
    assert _count("imap-verifier", "internal_error") == internal + 1
    assert _count("alice@example.org", "a server's free text") == 0.0
