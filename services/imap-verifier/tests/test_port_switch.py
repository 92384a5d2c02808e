"""The verifier's port-switch rules, as plain functions."""

from imap_verifier.domain.port_switch import other_port_works_detail, other_way_to_try
from mailbox_link_contract.events import ServerSettings
from mailbox_link_contract.failures import FailureCode
from mailbox_link_contract.values import ConnectionSecurity

SUBMISSION = ServerSettings(
    host="smtp.example.org", port=587, security=ConnectionSecurity.STARTTLS, username="a"
)


def test_a_connection_failure_on_a_standard_port_tries_the_other_standard_port() -> None:
    other = other_way_to_try(SUBMISSION, FailureCode.TIMEOUT)
    assert other is not None
    assert (other.port, other.security) == (465, ConnectionSecurity.SSL)
    assert other.host == SUBMISSION.host


def test_a_wrong_password_or_an_unusual_port_tries_nothing_else() -> None:
    assert other_way_to_try(SUBMISSION, FailureCode.SMTP_AUTH_FAILED) is None
    unusual = SUBMISSION.model_copy(update={"port": 2525})
    assert other_way_to_try(unusual, FailureCode.TIMEOUT) is None


def test_the_detail_names_what_failed_and_what_to_use() -> None:
    other = other_way_to_try(SUBMISSION, FailureCode.TLS_FAILED)
    assert other is not None
    detail = other_port_works_detail("SMTP", SUBMISSION, FailureCode.TLS_FAILED, other)
    assert detail == (
        "SMTP on port 587 with STARTTLS failed (tls_failed), but port 465 with SSL/TLS works: "
        "use port 465, security ssl."
    )
