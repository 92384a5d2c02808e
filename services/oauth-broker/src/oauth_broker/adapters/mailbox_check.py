"""Logs in to a mailbox's IMAP and SMTP servers with an OAuth access token, as a product would
use it: XOAUTH2 (Google, Microsoft, Dovecot), or the mechanism an OIDC provider is configured
with."""

import asyncio
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from mailbox_link_contract.events import ServerSettings
from mailbox_link_shared.mail_probes import (
    Endpoint,
    probe_imap_oauthbearer,
    probe_imap_xoauth2,
    probe_smtp_oauthbearer,
    probe_smtp_xoauth2,
)
from mailbox_link_shared.mail_resolver import resolve_endpoint
from mailbox_link_shared.network_policy import IPNetwork, PortRanges
from mailbox_link_shared.oidc_providers import SaslMechanism

_Probe = Callable[[Endpoint, str, str, ssl.SSLContext, float], Awaitable[None]]
# The token logins, IMAP's and SMTP's: XOAUTH2, and the standard OAUTHBEARER (RFC 7628).
_PROBES: dict[SaslMechanism, tuple[_Probe, _Probe]] = {
    SaslMechanism.XOAUTH2: (probe_imap_xoauth2, probe_smtp_xoauth2),
    SaslMechanism.OAUTHBEARER: (probe_imap_oauthbearer, probe_smtp_oauthbearer),
}
SUPPORTED_MECHANISMS = frozenset(_PROBES)


@dataclass(frozen=True)
class OAuthMailboxCheck:
    """Checks both servers at once; raises ProbeFailed, IMAP's reason before SMTP's."""

    tls: ssl.SSLContext
    allowlist: Sequence[IPNetwork]
    timeout: float
    allowed_ports: PortRanges

    async def __call__(
        self,
        imap: ServerSettings,
        smtp: ServerSettings,
        access_token: str,
        mechanism: SaslMechanism = SaslMechanism.XOAUTH2,
    ) -> None:
        probe_imap, probe_smtp = _PROBES[mechanism]
        results = await asyncio.gather(
            self._login(probe_imap, imap, access_token),
            self._login(probe_smtp, smtp, access_token),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _login(self, probe: _Probe, server: ServerSettings, access_token: str) -> None:
        endpoint = await resolve_endpoint(
            server, self.allowlist, self.timeout, allowed_ports=self.allowed_ports
        )
        await probe(endpoint, server.username, access_token, self.tls, self.timeout)
