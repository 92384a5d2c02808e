"""Verifies a requested custom-IMAP mailbox and announces the result, only once the registry
reserved the link: a request waits in the store for its LinkReserved (either may come first),
the link's one start marker decides which handler (of any replica) logs in, and a LinkRejected
makes sure it never does."""

import asyncio
import logging
from collections.abc import Awaitable
from typing import Final

from imap_verifier.adapters.typed_inbox import typed_inbox
from imap_verifier.config import SERVICE_NAME
from imap_verifier.domain.failure_report import (
    ChecksFailed,
    all_failures,
    report,
    with_login_hint,
)
from imap_verifier.domain.ownership import ProofFailed, needs_proof, prove_ownership
from imap_verifier.domain.pending import StartReason
from imap_verifier.domain.port_switch import (
    may_be_cured_elsewhere,
    other_port_works_detail,
    standard_other_way,
)
from imap_verifier.ports import VerifierDeps
from mailbox_link_contract.events import (
    AuthMethod,
    Authority,
    Failure,
    LinkRejected,
    LinkRequested,
    LinkReserved,
    MailboxChecked,
    MailboxCheckRequested,
    MailboxCheckRequestedData,
    MailboxHealthChanged,
    MailboxLinked,
    MailboxReconnected,
    MailboxUnlinked,
    MailboxVerified,
    MailboxVerifiedData,
    ProviderType,
    ServerSettings,
    VerificationFailed,
    VerificationFailedData,
)
from mailbox_link_contract.failures import FailureCode
from mailbox_link_shared import metrics
from mailbox_link_shared.credentials import MailboxCredentials
from mailbox_link_shared.health_checks import run_mailbox_check
from mailbox_link_shared.mail_probes import PLAINTEXT_GREETING_WAIT, Probe, ProbeFailed
from mailbox_link_shared.rate_limits import TooManyAttempts, wait_text
from mailbox_link_shared.routing import EventHandlers, ignore
from mailbox_link_shared.tracing import LINK_ID

logger = logging.getLogger(__name__)
# When the typed way has not answered after this share of the check's budget, the standard other
# way is tried beside it (it keeps the rest of the budget): a silent typed port then still gets
# its other-port suggestion by the deadline, and a server that answers within the first third
# (any working one: a login takes a second or two) is never logged in to twice.
OTHER_WAY_AFTER = 1 / 3
# Once one check (IMAP or SMTP) has failed, the other gets this long to finish before the
# failure is published without it: long enough for its security-mismatch try (a plaintext
# greeting awaited PLAINTEXT_GREETING_WAIT, then one TLS handshake) to conclude, far shorter
# than the check's whole deadline, which a silent server would make the user wait for.
FAILURE_GRACE: Final = PLAINTEXT_GREETING_WAIT + 1.0


async def when_link_requested_remember(event: LinkRequested, deps: VerifierDeps) -> None:
    """Keeps a password link request until its reservation comes, and starts it if it has."""
    data = event.data
    if data.provider is not ProviderType.IMAP or data.credentials is None:
        return  # another verifier's provider type (OAuth links carry no password)
    await deps.store.save_request(data.link_id, event.model_dump_json(), deps.clock())
    await _start_if_reserved(data.link_id, deps)


async def when_link_reserved_start(event: LinkReserved, deps: VerifierDeps) -> None:
    """Notes the registry's reservation, and starts the link if its request is in."""
    data = event.data
    if data.provider is not None and data.provider is not ProviderType.IMAP:
        return  # an OAuth link's reservation: the broker's
    await deps.store.save_reservation(data.link_id, data.expires_at, deps.clock())
    await _start_if_reserved(data.link_id, deps)


async def when_link_rejected_forget(event: LinkRejected, deps: VerifierDeps) -> None:
    """A refused link is never logged in to: its start marker is taken and its request dropped."""
    link_id = event.data.link_id
    await deps.store.claim_start(link_id, StartReason.REJECTED, deps.clock())
    await deps.store.discard(link_id)


async def _start_if_reserved(link_id: str, deps: VerifierDeps) -> None:
    # Both handlers write their document before reading both, so whichever runs last sees the
    # pair; if both see it, the unique start marker lets one of them (of any replica) go on.
    stored = await deps.store.ready_request(link_id, deps.clock())
    if stored is None:
        return
    if not await deps.store.claim_start(link_id, StartReason.VERIFY, deps.clock()):
        return  # started already (a redelivery, another replica) or rejected meanwhile
    await verify_link(LinkRequested.model_validate_json(stored), deps)
    await deps.store.discard(link_id)


async def verify_link(event: LinkRequested, deps: VerifierDeps) -> None:
    """Logs in to the mailbox's IMAP and SMTP servers, proves ownership if the link's authority
    needs it, and emits the verdict."""
    data = event.data
    authority = data.authority
    try:
        if data.credentials is None:
            raise ValueError("a password link without credentials")
        opened = deps.secret_box.open(data.credentials, context=data.address)
        credentials = MailboxCredentials.from_json(opened)
        limits = deps.login_limits
        if limits is not None:
            await limits.before_logins(data.imap, data.smtp, deps.clock())
        try:
            await verify_mailbox(data.imap, data.smtp, credentials, deps, address=data.address)
        except ProbeFailed as failure:
            if limits is not None:
                codes = [each.code for each in all_failures(failure)]
                await limits.after_failures(codes, data.imap, data.smtp, deps.clock())
            raise
        if needs_proof(authority):
            await _prove(event, credentials, deps)
            authority = Authority.OWNERSHIP_PROOF
    except TooManyAttempts as over:
        # Nothing connected: the target login is in back-off, or it or its host is out of budget.
        logger.info("link %s not tried: %s", data.link_id, over.limit)
        detail = wait_text(over.retry_at, deps.clock())
        failed = Failure.of(FailureCode.TOO_MANY_ATTEMPTS, detail)
        await deps.publisher.publish(_failed(event, failed))
        return
    except ProbeFailed as failure:
        reported = report(failure)
        others = [other.code.value for other in reported.other_failures]
        also = ", ".join(others) or "nothing else"
        logger.info(
            "link %s failed verification: %s (%s); also %s",
            data.link_id, failure.code, failure.detail, also,
        )  # fmt: skip
        await deps.publisher.publish(_failed(event, reported))
        return
    except ProofFailed as failure:
        logger.info(
            "link %s failed verification: %s (%s)", data.link_id, failure.code, failure.detail
        )
        await deps.publisher.publish(_failed(event, Failure.of(failure.code, failure.detail)))
        return
    except Exception as exc:
        # A bug, or a secret sealed with a key we no longer have: answer, never leave the link
        # pending. Only the type is logged: library messages may quote what was sent.
        logger.error("link %s could not be verified: %s", data.link_id, type(exc).__name__)
        internal = Failure.of(FailureCode.INTERNAL_ERROR, type(exc).__name__)
        await deps.publisher.publish(_failed(event, internal))
        return
    logger.info("link %s verified", data.link_id)
    verified = MailboxVerifiedData(**{**data.model_dump(), "authority": authority})
    await deps.publisher.publish(
        MailboxVerified(correlation_id=event.correlation_id, producer=SERVICE_NAME, data=verified)
    )


async def _prove(event: LinkRequested, credentials: MailboxCredentials, deps: VerifierDeps) -> None:
    data = event.data
    inbox = typed_inbox(
        data.imap, credentials.imap_password, deps.resolve, deps.allowlist, deps.tls, deps.timeout
    )
    proof = deps.proof
    await prove_ownership(
        data.address, proof.product, proof.from_address, proof.sender, inbox, proof.policy
    )
    logger.info("link %s: ownership proven", data.link_id)


async def verify_mailbox(
    imap: ServerSettings,
    smtp: ServerSettings,
    credentials: MailboxCredentials,
    deps: VerifierDeps,
    *,
    address: str,
    other_ports: bool = True,
) -> None:
    """Checks both servers at once, each within `deps.timeout` seconds, the other-port try
    included (unless `other_ports` is False: a health check logs in as stored, nothing else).
    Once one has failed, the other gets FAILURE_GRACE more, not its whole deadline; raises
    ChecksFailed with every failure known by then, IMAP's before SMTP's, a refused login that
    was not the full `address` hinting at it."""
    check = _check if other_ports else _check_as_stored
    imap_check = _timed(
        "imap", check("IMAP", imap, credentials.imap_password, deps.probe_imap, deps)
    )
    smtp_check = _timed(
        "smtp", check("SMTP", smtp, credentials.smtp_password, deps.probe_smtp, deps)
    )
    # In this order: IMAP's failure is the primary one when both are known.
    checks = [(imap, asyncio.create_task(imap_check)), (smtp, asyncio.create_task(smtp_check))]
    tasks = [task for _, task in checks]
    try:
        pending = set(tasks)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if pending and any(task.exception() is not None for task in done):
                await asyncio.wait(pending, timeout=FAILURE_GRACE)
                break
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    failures: list[ProbeFailed] = []
    for server, task in checks:
        failure = None if task.cancelled() else task.exception()
        if failure is None:
            continue
        if not isinstance(failure, ProbeFailed):
            raise failure  # a bug: answered as internal_error by verify_link
        failures.append(with_login_hint(failure, server, address))
    if failures:
        raise ChecksFailed(failures)


async def _timed(protocol: str, check: Awaitable[None]) -> None:
    """Observes the check's duration and verdict in the verification histogram."""
    with metrics.timed_verification(protocol, _verdict_code):
        await check


def _verdict_code(exc: BaseException) -> str | None:
    # A check cancelled because the other one failed first gave no verdict of its own.
    if isinstance(exc, ProbeFailed):
        return exc.code
    if isinstance(exc, asyncio.CancelledError):
        return None
    return FailureCode.INTERNAL_ERROR


async def _check(
    kind: str, server: ServerSettings, password: str, probe: Probe, deps: VerifierDeps
) -> None:
    """Logs in as typed and, if that fails in a way another port may cure (or has not answered
    after OTHER_WAY_AFTER of the budget), on the standard other port too; every try ends by one
    deadline, so a silent typed port still gets its suggestion within `deps.timeout`."""
    deadline = asyncio.get_running_loop().time() + deps.timeout
    other = standard_other_way(server)
    if other is None:
        await _login(server, password, probe, deps, deadline)
        return
    typed = asyncio.create_task(_login(server, password, probe, deps, deadline))
    second: asyncio.Task[None] | None = None
    try:
        await asyncio.wait((typed,), timeout=deps.timeout * OTHER_WAY_AFTER)
        if not typed.done() or _curable_failure(typed) is not None:
            second = asyncio.create_task(_login(other, password, probe, deps, deadline))
        await asyncio.wait((typed,))
        failure = _curable_failure(typed)
        if second is None or failure is None:
            typed.result()  # worked, or failed in a way no other port cures
            return
        try:
            await second
        except ProbeFailed as refused:
            # The other port answered and refused the login (a wrong password): that is what
            # to fix first, and it must count towards the login's back-off like any other.
            if not may_be_cured_elsewhere(refused.code):
                raise
            raise failure from None
        detail = other_port_works_detail(kind, server, failure.code, other)
        raise ProbeFailed(FailureCode.OTHER_PORT_WORKS, detail) from None
    finally:
        started = [task for task in (typed, second) if task is not None]
        for task in started:
            task.cancel()
        await asyncio.gather(*started, return_exceptions=True)


async def _check_as_stored(
    kind: str, server: ServerSettings, password: str, probe: Probe, deps: VerifierDeps
) -> None:
    """Logs in on the server's own port and security only, within `deps.timeout`."""
    deadline = asyncio.get_running_loop().time() + deps.timeout
    await _login(server, password, probe, deps, deadline)


def _curable_failure(login: "asyncio.Task[None]") -> ProbeFailed | None:
    """Returns the login's failure if it ended with one another port may cure."""
    failure = login.exception() if login.done() else None
    if isinstance(failure, ProbeFailed) and may_be_cured_elsewhere(failure.code):
        return failure
    return None


async def _login(
    server: ServerSettings, password: str, probe: Probe, deps: VerifierDeps, deadline: float
) -> None:
    endpoint = await deps.resolve(server, deps.allowlist, _left(deadline, deps.timeout))
    await probe(endpoint, server.username, password, deps.tls, _left(deadline, deps.timeout))


def _left(deadline: float, budget: float) -> float:
    left = deadline - asyncio.get_running_loop().time()
    if left <= 0:
        raise ProbeFailed(FailureCode.TIMEOUT, f"no answer within {budget:g} s")
    return left


async def when_check_requested_log_in(event: MailboxCheckRequested, deps: VerifierDeps) -> None:
    """Runs a password mailbox's health check (docs/adr/0023): logs in to its IMAP and SMTP
    servers at once, as stored (no other port, no proof of ownership), inside the login limits,
    and answers MailboxChecked with the failure, if any."""
    data = event.data
    if data.auth is not AuthMethod.PASSWORD:
        return  # an OAuth mailbox: the broker checks it
    attributes = {LINK_ID: data.link_id, "mailbox_link.auth": data.auth.value}
    checked = await run_mailbox_check(
        SERVICE_NAME, event, attributes, lambda: _run_check(data, deps)
    )
    await deps.publisher.publish(checked)


async def _run_check(data: MailboxCheckRequestedData, deps: VerifierDeps) -> Failure | None:
    """The check's failure, or None when both logins worked."""
    try:
        if data.credentials is None:
            raise ValueError("a password mailbox's check without credentials")
        opened = deps.secret_box.open(data.credentials, context=data.address)
        credentials = MailboxCredentials.from_json(opened)
        limits = deps.login_limits
        if limits is not None:
            # Budgets and back-off are respected, but a refused login is not counted towards
            # the back-off: the stored password is no guess, and counting it would lock the
            # owner out of the reconnect that mends it (docs/adr/0023, "Consequences").
            await limits.before_logins(data.imap, data.smtp, deps.clock())
        await verify_mailbox(
            data.imap, data.smtp, credentials, deps, address=data.address, other_ports=False
        )
    except TooManyAttempts as over:
        # Our own limit, not the server's verdict: a code that never means the credentials
        # were refused, so the registry only degrades the mailbox and tries again later.
        logger.info("check %s not run: %s", data.check_id, over.limit)
        return Failure.of(FailureCode.TOO_MANY_ATTEMPTS, wait_text(over.retry_at, deps.clock()))
    except ProbeFailed as failure:
        reported = report(failure)
        logger.info("check %s of mailbox %s failed: %s (%s)",
                    data.check_id, data.mailbox_id, failure.code, failure.detail)  # fmt: skip
        return reported
    except Exception as exc:
        # A bug, or a secret sealed with a retired key: answered (the registry degrades the
        # mailbox), never left unanswered. Only the type: a message may quote the secret.
        logger.error("check %s could not be run: %s", data.check_id, type(exc).__name__)
        return Failure.of(FailureCode.INTERNAL_ERROR, type(exc).__name__)
    logger.info("check %s of mailbox %s: ok", data.check_id, data.mailbox_id)
    return None


def _failed(event: LinkRequested, failure: Failure) -> VerificationFailed:
    data = event.data
    failed = VerificationFailedData(
        link_id=data.link_id,
        owner=data.owner,
        address=data.address,
        provider=data.provider,
        failure=failure,
    )
    return VerificationFailed(
        correlation_id=event.correlation_id, producer=SERVICE_NAME, data=failed
    )


EVENT_HANDLERS: EventHandlers[VerifierDeps] = {
    LinkRequested: when_link_requested_remember,
    LinkReserved: when_link_reserved_start,
    LinkRejected: when_link_rejected_forget,
    # A linked or unlinked mailbox is past verification: nothing of ours is left to do.
    MailboxLinked: ignore,
    MailboxReconnected: ignore,
    MailboxUnlinked: ignore,
    MailboxCheckRequested: when_check_requested_log_in,
    # Our own answers, and the registry's verdict on them: nothing for a verifier to do.
    MailboxChecked: ignore,
    MailboxHealthChanged: ignore,
}
