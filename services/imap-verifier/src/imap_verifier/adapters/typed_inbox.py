"""The inbox searcher: the typed IMAP account's INBOX, reached as the checks reach it (vetted
address, TLS against the typed name), through shared's open_inbox (aioimaplib)."""

import contextlib
import ssl
from collections.abc import AsyncIterator, Sequence

from imap_verifier.domain.ownership import Inbox, OpenInbox
from imap_verifier.ports import Resolve
from mailbox_link_contract.events import ServerSettings
from mailbox_link_shared.mail_probes.inbox import open_inbox
from mailbox_link_shared.network_policy import IPNetwork


def typed_inbox(
    server: ServerSettings,
    password: str,
    resolve: Resolve,
    allowlist: Sequence[IPNetwork],
    tls: ssl.SSLContext,
    timeout: float,
) -> OpenInbox:
    """Returns how to open the INBOX of the account the person typed."""

    @contextlib.asynccontextmanager
    async def opened() -> AsyncIterator[Inbox]:
        endpoint = await resolve(server, allowlist, timeout)
        async with open_inbox(endpoint, server.username, password, tls, timeout) as session:
            yield session

    return opened
