"""What both verifiers do around a linked mailbox's health check (docs/adr/0023): one span,
one metric and one MailboxChecked answer, whatever the check itself does."""

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from opentelemetry.trace import Status, StatusCode

from mailbox_link_contract.events import (
    Failure,
    MailboxChecked,
    MailboxCheckedData,
    MailboxCheckRequested,
)
from mailbox_link_shared import metrics
from mailbox_link_shared.tracing import span


async def run_mailbox_check(
    verifier: str,
    event: MailboxCheckRequested,
    attributes: Mapping[str, Any],
    check: Callable[[], Awaitable[Failure | None]],
) -> MailboxChecked:
    """Runs `check` in a `mailbox check` span, counts and times it, and returns the answer to
    publish (failure None: the logins worked)."""
    with span("mailbox check", attributes=attributes) as current:
        started = time.perf_counter()
        failure = await check()
        code = None if failure is None else failure.code
        metrics.health_check_finished(verifier, code, time.perf_counter() - started)
        current.set_attribute("mailbox_link.check_result", metrics.result_of(code))
        if code is not None:
            current.set_status(Status(StatusCode.ERROR, str(code)))
    return checked_event(verifier, event, failure)


def checked_event(
    producer: str, event: MailboxCheckRequested, failure: Failure | None
) -> MailboxChecked:
    """The MailboxChecked answering `event`."""
    data = event.data
    checked = MailboxCheckedData(
        check_id=data.check_id,
        mailbox_id=data.mailbox_id,
        link_id=data.link_id,
        owner=data.owner,
        address=data.address,
        provider=data.provider,
        failure=failure,
    )
    return MailboxChecked(correlation_id=event.correlation_id, producer=producer, data=checked)
