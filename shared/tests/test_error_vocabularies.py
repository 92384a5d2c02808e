"""Both error vocabularies are complete: every failure code (events) has words a person can act
on, and every API error code has its status and meaning."""

import pytest

from mailbox_link_contract.failures import FAILURE_TEXTS, FailureCode
from mailbox_link_shared.api_errors import API_ERRORS, ApiErrorCode


@pytest.mark.parametrize("code", list(FailureCode))
def test_every_failure_code_has_a_message_and_a_remediation(code: FailureCode) -> None:
    text = FAILURE_TEXTS[code]
    assert text.message.strip().endswith(".")
    assert len(text.remediation.split()) >= 3


@pytest.mark.parametrize("code", list(ApiErrorCode))
def test_every_api_error_code_has_a_status_and_a_meaning(code: ApiErrorCode) -> None:
    text = API_ERRORS[code]
    assert 400 <= text.status <= 599
    assert text.meaning.strip().endswith(".")


def test_the_two_vocabularies_do_not_share_a_code_with_different_meanings() -> None:
    # link_in_progress is both: the registry's refusal of a second link request, and the API's
    # refusal to unlink a mailbox still being linked; the same situation, so the same word.
    # reconnect_required likewise: the mailbox's flag, and the access endpoint's refusal to
    # hand out a credential of such a mailbox (docs/adr/0023).
    shared = {c.value for c in FailureCode} & {c.value for c in ApiErrorCode}
    assert shared == {"link_in_progress", "reconnect_required"}
