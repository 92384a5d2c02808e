"""Security chosen wrong for a port, end to end (link-api -> Kafka -> imap-verifier -> registry
-> link-api): the link fails with `security_mismatch` naming the setting that works, without
waiting for the verifier's 15 s deadline, and every failure found is in the link's status.

No timed assertions: each test prints how long the link took, for the record."""

import time
from typing import Any

import httpx
import pytest

from localinfra.stack import Endpoints

from .conftest import imap_body, link_and_wait, unique_user_id

WORDS = {"ssl": "SSL/TLS", "starttls": "STARTTLS"}


async def _timed_link(api: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    started = time.monotonic()
    link = await link_and_wait(api, "acme", unique_user_id(), body)
    print(f"link {link['status']} after {time.monotonic() - started:.2f} s (POST to outcome)")
    return link


@pytest.mark.parametrize("protocol", ["imap", "smtp"])
async def test_starttls_on_an_implicit_tls_port_fails_with_security_mismatch(
    api: httpx.AsyncClient, infra: Endpoints, new_mail_user: Any, protocol: str
) -> None:
    body = imap_body(infra, new_mail_user(f"mismatch-{protocol}"))
    body[protocol]["security"] = "starttls"  # on the implicit-TLS port imap_body chose
    link = await _timed_link(api, body)
    assert link["status"] == "failed", link
    port = body[protocol]["port"]
    assert link["failure"]["code"] == "security_mismatch"
    assert link["failure"]["detail"] == (
        f"{protocol.upper()} port {port} expects SSL/TLS, not STARTTLS: set its security to ssl"
    )
    assert link["failure"]["other_failures"] == []


async def test_a_wrong_imap_password_and_a_wrong_smtp_security_are_both_in_the_link(
    api: httpx.AsyncClient, infra: Endpoints, new_mail_user: Any
) -> None:
    user = new_mail_user("both-wrong")
    body = imap_body(
        infra,
        user,
        smtp_port=infra.submission_starttls_port,
        smtp_security="ssl",  # SSL/TLS on the STARTTLS port
        smtp_password=user.password,
    )
    body["imap"]["password"] = "not-the-password"
    link = await _timed_link(api, body)
    assert link["status"] == "failed", link
    failure = link["failure"]
    assert failure["code"] == "imap_auth_failed"
    [other] = failure["other_failures"]
    assert other["code"] == "security_mismatch"
    assert other["detail"] == (
        f"SMTP port {infra.submission_starttls_port} expects STARTTLS, not SSL/TLS: "
        "set its security to starttls"
    )
    assert other["message"]
    assert other["remediation"]
    assert "not-the-password" not in str(link)
