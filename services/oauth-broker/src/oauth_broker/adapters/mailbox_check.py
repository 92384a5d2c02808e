"""Logs in to a mailbox's IMAP and SMTP servers with XOAUTH2, as a product would use it."""

import asyncio
import ssl
from collections.abc import Sequence
from dataclasses import dataclass

from mailbox_link_contract.events import ServerSettings
from mailbox_link_shared.mail_probes import probe_imap_xoauth2, probe_smtp_xoauth2
from mailbox_link_shared.mail_resolver import resolve_endpoint
from mailbox_link_shared.network_policy import IPNetwork, PortRanges


@dataclass(frozen=True)
class XOAuth2MailboxCheck:
    """Checks both servers at once; raises ProbeFailed, IMAP's reason before SMTP's."""

    tls: ssl.SSLContext
    allowlist: Sequence[IPNetwork]
    timeout: float
    allowed_ports: PortRanges

    async def __call__(self, imap: ServerSettings, smtp: ServerSettings, access_token: str) -> None:
        results = await asyncio.gather(
            self._imap(imap, access_token), self._smtp(smtp, access_token), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _imap(self, server: ServerSettings, access_token: str) -> None:
        endpoint = await resolve_endpoint(
            server, self.allowlist, self.timeout, allowed_ports=self.allowed_ports
        )
        await probe_imap_xoauth2(endpoint, server.username, access_token, self.tls, self.timeout)

    async def _smtp(self, server: ServerSettings, access_token: str) -> None:
        endpoint = await resolve_endpoint(
            server, self.allowlist, self.timeout, allowed_ports=self.allowed_ports
        )
        await probe_smtp_xoauth2(endpoint, server.username, access_token, self.tls, self.timeout)
