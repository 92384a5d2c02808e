"""Rate limits on the running system, against the real Dovecot (docs/adr/0015): a burst of
wrong-password guesses for one login, sent as an attacker would (throwaway product users and
addresses, the victim's username and host), is refused after the limit, and the logins that
reach Dovecot stop there (counted in Dovecot's own log); the right password does not link
during the back-off; a user's hourly budget ends in 429 with Retry-After.

These run on their own service set with the production defaults (the shared one is generous,
so the rest of the suite can link the same few logins again and again)."""

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from localinfra.services import RunningServices, start_services
from localinfra.stack import Endpoints

from .conftest import (
    MailUser,
    imap_body,
    links_path,
    service_config,
    unique_user_id,
    wait_for_outcome,
)
from .probes import dump_databases, events_about

# The first test also starts this module's own service set (four processes), which on a busy
# 2-core machine can take longer than the default 120 s.
pytestmark = pytest.mark.timeout(300)

NAMESPACE = "e2e-limits"
USER_BUDGET = 3  # per hour, small so the budget test stays short; the rest are the defaults
FREE_FAILURES = 5  # the default (RateLimitSettings.rate_limit_free_failures)
LOGIN_ATTEMPTS = 10  # the default attempts per target login per hour
FIRST_WAIT = 15 * 60  # the default first back-off wait, seconds


@pytest.fixture(scope="module")
def limited_services(infra: Endpoints, workdir: Path) -> Iterator[RunningServices]:
    config = service_config(
        infra,
        namespace=NAMESPACE,
        rate_limits={"MBL_RATE_LIMIT_USER_LINKS_PER_HOUR": str(USER_BUDGET)},
    )
    running = start_services(config, workdir / "services-limits")
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
async def limited_api(limited_services: RunningServices) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {limited_services.caller_token}"}
    async with httpx.AsyncClient(
        base_url=limited_services.api_url, headers=headers, timeout=30
    ) as client:
        yield client


def dovecot_password_checks(infra: Endpoints, username: str) -> dict[str, int]:
    """Counts the logins of `username` that reached Dovecot, from its logs: the auth
    process's password mismatches, and the IMAP and submission logins that failed."""
    counts = {"mismatches": 0, "imap": 0, "submission": 0}
    for log in Path(infra.workdir).rglob("dovecot.log"):
        for line in log.read_text(errors="replace").splitlines():
            if f"passwd-file({username}," in line and "Password mismatch" in line:
                counts["mismatches"] += 1
            elif f"user=<{username}>" in line and "auth failed" in line:
                kind = "imap" if "imap-login:" in line else "submission"
                counts[kind] += 1
    return counts


async def settled_checks(infra: Endpoints, username: str) -> dict[str, int]:
    """Dovecot's counts once its log has stopped growing (its log process writes a moment
    after the client is answered)."""
    last = dovecot_password_checks(infra, username)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        await asyncio.sleep(1.0)
        now = dovecot_password_checks(infra, username)
        if now == last:
            return now
        last = now
    return last


def guess_body(infra: Endpoints, victim: MailUser, password: str) -> dict[str, Any]:
    """The attacker's request: a throwaway address, the victim's login and server."""
    attacker = MailUser(f"throwaway-{secrets.token_hex(4)}@example.org", password)
    body = imap_body(infra, attacker)
    body["imap"]["username"] = victim.address
    body["smtp"]["username"] = victim.address
    return body


async def attempt(
    api: httpx.AsyncClient, account_id: str, body: dict[str, Any]
) -> tuple[str, httpx.Response]:
    """Posts one link request from a fresh product user; returns its end: the failure code or
    status, or "429"."""
    response = await api.post(links_path(account_id, unique_user_id()), json=body)
    if response.status_code == 429:
        return "429", response
    assert response.status_code == 202, response.text
    link = await wait_for_outcome(api, response.json()["status_url"], seconds=60)
    outcome = link["failure"]["code"] if link["status"] == "failed" else link["status"]
    return str(outcome), response


def assert_is_back_off_429(response: httpx.Response) -> None:
    assert response.status_code == 429
    body = response.json()
    assert body["error"] == "too_many_requests"
    assert [f["field"] for f in body["fields"]] == ["imap.username"]
    assert "try again after" in body["fields"][0]["message"]
    assert 0 < int(response.headers["Retry-After"]) <= FIRST_WAIT


async def test_a_burst_of_guesses_for_one_login_is_refused_after_the_limit_and_stops_reaching_dovecot(  # noqa: E501
    limited_api: httpx.AsyncClient, infra: Endpoints, new_mail_user: Any
) -> None:
    victim: MailUser = new_mail_user("victim")
    account = f"acme-{secrets.token_hex(3)}"
    outcomes: list[str] = []
    for n in range(FREE_FAILURES + 4):
        outcome, response = await attempt(
            limited_api, account, guess_body(infra, victim, f"guess-{n}-{secrets.token_hex(4)}")
        )
        outcomes.append(outcome)
        if n == FREE_FAILURES - 1:
            at_limit = await settled_checks(infra, victim.address)
        if outcome == "429":
            assert_is_back_off_429(response)
    # The free failures reach Dovecot; once the verifier has recorded them, link-api refuses
    # every further guess at the door.
    assert outcomes == ["imap_auth_failed"] * FREE_FAILURES + ["429"] * 4
    assert at_limit["imap"] == FREE_FAILURES

    # The right password, during the back-off: refused too, so a guess cannot succeed; the
    # refused request left nothing behind but its budget slot.
    right = guess_body(infra, victim, victim.password)
    outcome, response = await attempt(limited_api, account, right)
    assert outcome == "429"
    assert_is_back_off_429(response)
    assert await events_about(infra.kafka_bootstrap, NAMESPACE, right["email"]) == []
    stored = b"".join(await dump_databases(infra.mongodb_uri, NAMESPACE))
    assert right["email"].encode() not in stored
    # The limits' documents name no address or username, and hold no password.
    limits = b"".join(await dump_databases(infra.mongodb_uri, f"{NAMESPACE}-rate-limits"))
    assert limits
    assert victim.address.encode() not in limits
    assert victim.password.encode() not in limits
    after = await settled_checks(infra, victim.address)
    assert after == at_limit, "a login reached Dovecot past the limit"
    print(f"limit reached after {FREE_FAILURES} attempts; Dovecot saw {after}")


async def test_a_concurrent_burst_reaches_dovecot_at_most_the_login_budget(
    limited_api: httpx.AsyncClient, infra: Endpoints, new_mail_user: Any
) -> None:
    # Sent at once, before any failure is known: the verifier's per-login budget and then the
    # back-off bound what reaches the server; the rest fail too_many_attempts or get 429.
    victim: MailUser = new_mail_user("burst")
    account = f"acme-{secrets.token_hex(3)}"
    burst = 2 * LOGIN_ATTEMPTS
    results = await asyncio.gather(
        *(
            attempt(limited_api, account, guess_body(infra, victim, f"g{n}-{secrets.token_hex(4)}"))
            for n in range(burst)
        )
    )
    outcomes = [outcome for outcome, _ in results]
    failures = outcomes.count("imap_auth_failed")
    refused = outcomes.count("too_many_attempts") + outcomes.count("429")
    assert FREE_FAILURES <= failures <= LOGIN_ATTEMPTS, outcomes
    assert failures + refused == burst, outcomes
    seen = await settled_checks(infra, victim.address)
    assert seen["imap"] == failures
    print(f"concurrent burst of {burst}: {failures} reached Dovecot ({seen}), {outcomes}")


async def test_a_user_over_its_hourly_budget_gets_429_with_retry_after(
    limited_api: httpx.AsyncClient, infra: Endpoints, new_mail_user: Any
) -> None:
    path = links_path(f"acme-{secrets.token_hex(3)}", unique_user_id())
    for _ in range(USER_BUDGET):
        response = await limited_api.post(path, json=imap_body(infra, new_mail_user("budget")))
        assert response.status_code == 202, response.text
    response = await limited_api.post(path, json=imap_body(infra, new_mail_user("budget")))
    assert response.status_code == 429
    body = response.json()
    assert body["error"] == "too_many_requests"
    assert [f["field"] for f in body["fields"]] == ["user_id"]
    assert 0 < int(response.headers["Retry-After"]) <= 3600
