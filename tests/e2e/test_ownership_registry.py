"""Issue 12, requirement 3: nothing is revealed or held before control is proven.

Through HTTP, Kafka, the verifier and the registry: an address linked in one account is
answered `already_linked_elsewhere` to another account only after that account proved it
controls the mailbox; junk credentials get the verifier's own failure.
"""

from typing import Any

import httpx

from localinfra.stack import Endpoints

from .conftest import imap_body, link_and_wait, unique_user_id


async def test_junk_credentials_for_an_address_linked_elsewhere_learn_nothing(
    api: httpx.AsyncClient, infra: Endpoints, new_mail_user: Any
) -> None:
    user = new_mail_user("junk")
    first = await link_and_wait(api, "acme", unique_user_id(), imap_body(infra, user))
    assert first["status"] == "linked", first
    junk = imap_body(infra, user)
    junk["imap"]["password"] = "not-the-password"
    second = await link_and_wait(api, "globex", unique_user_id(), junk)
    assert second["status"] == "failed", second
    # The verification's failure, exactly as for an address nobody linked.
    assert second["failure"]["code"] == "imap_auth_failed"
    assert "already_linked_elsewhere" not in str(second)
    assert second["already_linked"] is False


async def test_the_right_password_for_an_address_linked_elsewhere_is_told_after_verifying(
    api: httpx.AsyncClient, infra: Endpoints, new_mail_user: Any
) -> None:
    user = new_mail_user("proven")
    first = await link_and_wait(api, "acme", unique_user_id(), imap_body(infra, user))
    assert first["status"] == "linked", first
    second = await link_and_wait(api, "globex", unique_user_id(), imap_body(infra, user))
    assert second["status"] == "failed", second
    assert second["failure"]["code"] == "already_linked_elsewhere"
    assert "acme" not in str(second)
