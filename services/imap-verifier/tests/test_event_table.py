"""imap-verifier's handler table against the catalogue, and every example of the contract replayed
through it: each is handled, knowingly ignored, or (not on imap-verifier's topics) skipped."""

import ssl
from collections.abc import Sequence

from pydantic import SecretStr
from verifier_fakes import NO_RELAY, MemoryPendingStore

from imap_verifier.config import SERVICE_NAME
from imap_verifier.handlers import EVENT_HANDLERS
from imap_verifier.ports import VerifierDeps
from mailbox_link_contract.events import ServerSettings
from mailbox_link_shared.crypto import SecretBox, generate_key
from mailbox_link_shared.mail_probes import Endpoint
from mailbox_link_shared.network_policy import IPNetwork
from mailbox_link_shared.publishing import RecordingPublisher
from mailbox_link_shared.routing import EventRouter, replay_problems, table_gaps


async def _resolve(server: ServerSettings, allowlist: Sequence[IPNetwork], t: float) -> Endpoint:
    return Endpoint(server.host, "192.0.2.10", server.port, server.security)


async def _accept(ep: Endpoint, user: str, password: str, tls: ssl.SSLContext, t: float) -> None:
    """Every login works: the replay is about routing, not about mail servers."""


def _deps() -> VerifierDeps:
    return VerifierDeps(
        publisher=RecordingPublisher(),
        # Not the examples' key: their sealed passwords do not open, which the handler answers.
        secret_box=SecretBox({"k1": SecretStr(generate_key())}, "k1"),
        resolve=_resolve,
        probe_imap=_accept,
        probe_smtp=_accept,
        tls=ssl.create_default_context(),
        allowlist=(),
        timeout=5.0,
        store=MemoryPendingStore(),
        proof=NO_RELAY,
    )


def test_the_table_lists_every_event_type_of_its_topics_and_no_other() -> None:
    assert table_gaps(SERVICE_NAME, EVENT_HANDLERS) == []


async def test_every_example_is_handled_ignored_or_skipped() -> None:
    assert await replay_problems(SERVICE_NAME, EventRouter(EVENT_HANDLERS, _deps())) == []
