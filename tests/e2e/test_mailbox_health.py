"""Linked mailboxes are checked on a schedule and their health follows the truth (issue 17,
docs/adr/0023), end to end: real Kafka, FerretDB, Dovecot and all four services, with short
health intervals in a service set of its own.

- The user changes their password at Dovecot: the next checks make the mailbox
  `reconnect_required` (`MailboxHealthChanged` on the topic, the listing says why); the owner
  reconnects in place with the new password and it is `active` again, same `mailbox_id`.
- The mail server is unreachable for a while: `degraded`, then `active` once it returns, never
  `reconnect_required`.
"""

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from localinfra.forwarder import TcpForwarder
from localinfra.services import RunningServices
from localinfra.stack import Endpoints, LocalStack
from mailbox_link_contract.events import MailboxHealthChanged
from mailbox_link_contract.topics import Topics

from ..example_internal_service.access import AccessRefused, registry_client, request_access
from ..example_internal_service.events import MailboxEvents, health_is, topic_end
from .conftest import (
    MailUser,
    caller,
    imap_body,
    link_and_wait,
    operator,
    running_services,
    service_config,
    unique_user_id,
)

NAMESPACE = "e2e-health"
# Checked every 2 s, a degraded mailbox retried after 1 s (doubling), two refusals in a row
# make it reconnect_required: the whole test takes seconds of checks, not hours.
HEALTH_ENV = {
    "MBL_HEALTH_CHECK_INTERVAL_SECONDS": "2",
    "MBL_HEALTH_CHECK_JITTER": "0",
    "MBL_HEALTH_RETRY_SECONDS": "1",
    "MBL_HEALTH_SCHEDULER_INTERVAL_SECONDS": "0.5",
    "MBL_HEALTH_AUTH_FAILURES": "2",
}
# Generous: on a busy 2-core machine a check round trip can take seconds; tests wait on the
# events themselves, never on a fixed time.
WITHIN = 90.0


@pytest.fixture(scope="module")
def health_services(
    infra: Endpoints, workdir: Path, local_stack: LocalStack
) -> Iterator[RunningServices]:
    config = service_config(infra, namespace=NAMESPACE, extra_env=HEALTH_ENV)
    with running_services(config, workdir / "health-services", local_stack.oauth_server) as run:
        yield run


@pytest.fixture
async def health_api(health_services: RunningServices) -> AsyncIterator[httpx.AsyncClient]:
    async with caller(health_services.api_url, health_services) as client:
        yield client


@pytest.fixture
async def health_registry(
    health_services: RunningServices,
) -> AsyncIterator[httpx.AsyncClient]:
    async with operator(health_services.registry_url, health_services) as client:
        yield client


async def _mailbox(api: httpx.AsyncClient, user_id: str) -> dict[str, Any]:
    response = await api.get(f"/v1/accounts/acme/users/{user_id}/mailboxes")
    assert response.status_code == 200, response.text
    [mailbox] = response.json()["mailboxes"]
    assert isinstance(mailbox, dict)
    return mailbox


async def _wait_for_listing(
    api: httpx.AsyncClient, user_id: str, status: str, checked_after: float = 0.0
) -> dict[str, Any]:
    """Polls the user's one mailbox until its status is `status` and it was checked after
    `checked_after` (a Unix time)."""
    deadline = time.monotonic() + WITHIN
    while True:
        mailbox = await _mailbox(api, user_id)
        checked = mailbox.get("last_checked_at")
        checked_at = _timestamp(checked) if checked else 0.0
        if mailbox["status"] == status and checked_at > checked_after:
            return mailbox
        if time.monotonic() > deadline:
            raise AssertionError(f"mailbox never {status} checked after {checked_after}: {mailbox}")
        await asyncio.sleep(0.5)


def _timestamp(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


async def test_a_changed_password_makes_the_mailbox_reconnect_required_until_reconnected(
    health_services: RunningServices,
    health_api: httpx.AsyncClient,
    infra: Endpoints,
    local_stack: LocalStack,
) -> None:
    topic = Topics.for_namespace(NAMESPACE).mailboxes
    start = await topic_end(infra.kafka_bootstrap, topic)
    user = MailUser(f"health-{secrets.token_hex(4)}@example.org", secrets.token_urlsafe(18))
    local_stack.add_mail_user(user.address, user.password)
    user_id = unique_user_id()
    linked = await link_and_wait(health_api, "acme", user_id, imap_body(infra, user))
    assert linked["status"] == "linked", linked
    mailbox_id = linked["mailbox_id"]
    # Scheduled checks run and succeed: the listing shows when.
    first = await _wait_for_listing(health_api, user_id, "active", checked_after=1.0)
    assert first["status_reason"] is None

    async with MailboxEvents(infra.kafka_bootstrap, topic, user.address, start=start) as events:
        changed = MailUser(user.address, secrets.token_urlsafe(18))
        local_stack.set_mail_password(user.address, changed.password)
        flagged = await events.wait_for(health_is("reconnect_required"), within=WITHIN)
        assert isinstance(flagged, MailboxHealthChanged)
        assert (flagged.data.mailbox_id, flagged.data.previous_health) == (mailbox_id, "active")
        assert flagged.data.failure is not None
        assert flagged.data.failure.code == "imap_auth_failed"
        assert flagged.producer == "registry"
        listed = await _mailbox(health_api, user_id)
        assert listed["status"] == "reconnect_required"
        assert listed["status_reason"]["code"] == "imap_auth_failed"
        # An internal service asking for it now gets the code, not the stale password.
        mailer = registry_client(health_services.registry_url, health_services.mailer_token)
        async with mailer:
            with pytest.raises(AccessRefused) as refused:
                await request_access(mailer, "acme", mailbox_id)
        assert (refused.value.status, refused.value.code) == (409, "reconnect_required")

        # The owner reconnects in place with the new password: the same mailbox, active again.
        again = await link_and_wait(health_api, "acme", user_id, imap_body(infra, changed))
        assert again["status"] == "linked", again
        assert (again["mailbox_id"], again["reconnected"]) == (mailbox_id, True)
        active = await events.wait_for(health_is("active"), within=WITHIN)
        assert isinstance(active, MailboxHealthChanged)
        assert (active.data.mailbox_id, active.data.previous_health) == (
            mailbox_id,
            "reconnect_required",
        )
        async with registry_client(health_services.registry_url, health_services.mailer_token) as m:
            access = await request_access(m, "acme", mailbox_id)
        assert access.imap.password == changed.password
    # And the checks that follow log in with the new password.
    reconnected_at = time.time()
    listed = await _wait_for_listing(health_api, user_id, "active", checked_after=reconnected_at)
    assert listed["mailbox_id"] == mailbox_id


async def test_an_unreachable_server_degrades_the_mailbox_and_never_asks_to_reconnect(
    health_services: RunningServices,
    health_api: httpx.AsyncClient,
    infra: Endpoints,
    local_stack: LocalStack,
) -> None:
    topic = Topics.for_namespace(NAMESPACE).mailboxes
    start = await topic_end(infra.kafka_bootstrap, topic)
    user = MailUser(f"outage-{secrets.token_hex(4)}@example.org", secrets.token_urlsafe(18))
    local_stack.add_mail_user(user.address, user.password)
    user_id = unique_user_id()
    targets = {"imaps": infra.imaps_port, "submissions": infra.submissions_port}
    with TcpForwarder(targets) as forwarder:
        body = imap_body(
            infra,
            user,
            imap_port=forwarder.ports["imaps"],
            smtp_port=forwarder.ports["submissions"],
        )
        linked = await link_and_wait(health_api, "acme", user_id, body)
        assert linked["status"] == "linked", linked
        await _wait_for_listing(health_api, user_id, "active", checked_after=1.0)
        async with MailboxEvents(infra.kafka_bootstrap, topic, user.address, start=start) as events:
            forwarder.stop()
            degraded = await events.wait_for(health_is("degraded"), within=WITHIN)
            assert isinstance(degraded, MailboxHealthChanged)
            assert degraded.data.failure is not None
            assert degraded.data.failure.code in ("imap_unreachable", "smtp_unreachable")
            listed = await _mailbox(health_api, user_id)
            assert listed["status"] == "degraded"
            # Several failed checks while it stays down: degraded, never reconnect_required.
            down_since = time.time()
            await _wait_for_listing(health_api, user_id, "degraded", checked_after=down_since)
            forwarder.start()
            active = await events.wait_for(health_is("active"), within=WITHIN)
            assert isinstance(active, MailboxHealthChanged)
            assert active.data.previous_health == "degraded"
            assert "reconnect_required" not in [e.data.health for e in events.health_changes()]
        assert (await _mailbox(health_api, user_id))["status"] == "active"


async def test_an_on_demand_check_is_one_at_a_time_and_refuses_other_accounts(
    health_services: RunningServices,
    health_api: httpx.AsyncClient,
    health_registry: httpx.AsyncClient,
    infra: Endpoints,
    local_stack: LocalStack,
) -> None:
    user = MailUser(f"ondemand-{secrets.token_hex(4)}@example.org", secrets.token_urlsafe(18))
    local_stack.add_mail_user(user.address, user.password)
    user_id = unique_user_id()
    linked = await link_and_wait(health_api, "acme", user_id, imap_body(infra, user))
    assert linked["status"] == "linked", linked
    mailbox_id = linked["mailbox_id"]
    path = f"/v1/accounts/acme/mailboxes/{mailbox_id}/checks"
    asked = time.time()
    first = await health_registry.post(path)
    assert first.status_code == 202, first.text
    assert first.json()["mailbox_id"] == mailbox_id
    await _wait_for_listing(health_api, user_id, "active", checked_after=asked)
    elsewhere = await health_registry.post(f"/v1/accounts/globex/mailboxes/{mailbox_id}/checks")
    unknown = await health_registry.post(f"/v1/accounts/acme/mailboxes/{'0' * 32}/checks")
    assert (elsewhere.status_code, unknown.status_code) == (404, 404)
    assert elsewhere.json() == unknown.json()
