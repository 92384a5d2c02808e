"""Verifies a requested custom-IMAP mailbox and announces the result."""

import asyncio
import logging

from imap_verifier.config import SERVICE_NAME
from imap_verifier.domain.port_switch import other_port_works_detail, other_way_to_try
from imap_verifier.ports import VerifierDeps
from mailbox_link_contract.events import (
    Failure,
    LinkRequested,
    MailboxVerified,
    MailboxVerifiedData,
    ProviderType,
    ServerSettings,
    VerificationFailed,
    VerificationFailedData,
)
from mailbox_link_contract.failures import FailureCode
from mailbox_link_shared.credentials import MailboxCredentials
from mailbox_link_shared.mail_probes import Probe, ProbeFailed
from mailbox_link_shared.routing import EventHandlers

logger = logging.getLogger(__name__)


async def when_link_requested_verify_mailbox(event: LinkRequested, deps: VerifierDeps) -> None:
    """Logs in to the mailbox's IMAP and SMTP servers and emits the verdict."""
    data = event.data
    if data.provider is not ProviderType.IMAP or data.credentials is None:
        return  # another verifier's provider type (OAuth links carry no password)
    try:
        opened = deps.secret_box.open(data.credentials, context=data.address)
        await verify_mailbox(data.imap, data.smtp, MailboxCredentials.from_json(opened), deps)
    except ProbeFailed as failure:
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
    verified = MailboxVerifiedData(**data.model_dump())
    await deps.publisher.publish(
        MailboxVerified(correlation_id=event.correlation_id, producer=SERVICE_NAME, data=verified)
    )


async def verify_mailbox(
    imap: ServerSettings, smtp: ServerSettings, credentials: MailboxCredentials, deps: VerifierDeps
) -> None:
    """Checks both servers at once; raises ProbeFailed, preferring IMAP's reason over SMTP's."""
    results = await asyncio.gather(
        _check("IMAP", imap, credentials.imap_password, deps.probe_imap, deps),
        _check("SMTP", smtp, credentials.smtp_password, deps.probe_smtp, deps),
        return_exceptions=True,
    )
    for result in results:
        if isinstance(result, BaseException):
            raise result


async def _check(
    kind: str, server: ServerSettings, password: str, probe: Probe, deps: VerifierDeps
) -> None:
    try:
        await _login(server, password, probe, deps)
    except ProbeFailed as failure:
        other = other_way_to_try(server, failure.code)
        if other is None:
            raise
        try:
            await _login(other, password, probe, deps)
        except ProbeFailed:
            raise failure from None
        detail = other_port_works_detail(kind, server, failure.code, other)
        raise ProbeFailed(FailureCode.OTHER_PORT_WORKS, detail) from None


async def _login(server: ServerSettings, password: str, probe: Probe, deps: VerifierDeps) -> None:
    endpoint = await deps.resolve(server, deps.allowlist, deps.timeout)
    await probe(endpoint, server.username, password, deps.tls, deps.timeout)


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
    LinkRequested: when_link_requested_verify_mailbox,
}
