"""What the verifier's handler works with: resolving a typed host to a vetted address and
logging in there (both implemented in shared's mail_resolver and mail_probes, which the OAuth
broker uses too, and faked in unit tests), wired in bootstrap."""

import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from mailbox_link_contract.events import (
    ServerSettings,
)
from mailbox_link_shared.crypto import SecretBox
from mailbox_link_shared.mail_probes import Endpoint, Probe
from mailbox_link_shared.network_policy import IPNetwork
from mailbox_link_shared.publishing import EventPublisher

Resolve = Callable[[ServerSettings, Sequence[IPNetwork], float], Awaitable[Endpoint]]


@dataclass(frozen=True)
class VerifierDeps:
    """What the handler works with; wired in bootstrap, faked in unit tests."""

    publisher: EventPublisher
    secret_box: SecretBox
    resolve: Resolve
    probe_imap: Probe
    probe_smtp: Probe
    tls: ssl.SSLContext
    allowlist: Sequence[IPNetwork]
    timeout: float
