"""Issue 17's proof: an internal service uses linked mailboxes through the registry's access
endpoint (docs/adr/0023), and no secret it was handed leaks anywhere afterwards.

The example internal service (tests/example_internal_service: the contract package, aiokafka,
httpx and the standard library's smtplib/imaplib, an implementation of its own) follows
`MailboxLinked` on the mailboxes topic, asks for access with its `mailbox_access` key, sends a
message through the mailbox's SMTP and finds it over IMAP: once for a password mailbox (PLAIN)
and once for an OAuth mailbox (XOAUTH2 with the token it was given). A key without the scope
gets 403, a key bound to another account 404. Then the services stop, and every topic, stored
document, log line, /metrics page and exported span is searched for the handed-out password
and token in the forms they travel in. Its own services (traces to a real collector, JSON
logs), on the real stack.
"""

import base64
import dataclasses
import json
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from localinfra import LocalOAuthServer
from localinfra.otel_collector import RunningCollector, running_collector
from localinfra.services import RunningServices
from localinfra.stack import Endpoints, LocalStack
from mailbox_link_contract.topics import Topics

from ..example_internal_service.access import (
    AccessRefused,
    MailboxAccess,
    registry_client,
    request_access,
)
from ..example_internal_service.events import MailboxEvents, is_linked, topic_end
from ..example_internal_service.mailer import find_message, send_message
from .conftest import (
    MailUser,
    caller,
    imap_body,
    link_and_wait,
    running_services,
    service_config,
    unique_user_id,
)
from .oauth_flow import Browser, link_through_sign_in, new_account
from .probes import dump_databases, read_topics

NAMESPACE = "e2e-internal"


@pytest.fixture(scope="module")
def collector() -> Iterator[RunningCollector]:
    with running_collector() as running:
        yield running


@pytest.fixture(scope="module")
def internal_services(
    collector: RunningCollector, infra: Endpoints, workdir: Path, local_stack: LocalStack
) -> Iterator[RunningServices]:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint, "MBL_LOG_FORMAT": "json"}
    config = service_config(infra, namespace=NAMESPACE, extra_env=env)
    logs = workdir / "internal-services"
    with running_services(config, logs, local_stack.oauth_server) as running:
        yield running


def _on_the_local_oauth_dovecot(access: MailboxAccess, infra: Endpoints) -> MailboxAccess:
    """The answer names the provider's servers (imap.gmail.com:993); here the local OAuth
    Dovecot plays them, as a resolver pointing those names at it would."""
    return dataclasses.replace(
        access,
        imap=dataclasses.replace(access.imap, host=infra.tls_hostname, port=infra.oauth_imaps_port),
        smtp=dataclasses.replace(
            access.smtp, host=infra.tls_hostname, port=infra.oauth_submissions_port
        ),
    )


def _forms(secret: str, username: str) -> list[bytes]:
    """A secret as it may travel: raw, JSON- and URL-escaped, base64 (also unpadded), and
    inside the SASL PLAIN and XOAUTH2 strings made of it."""
    raw = secret.encode()
    b64 = base64.b64encode(raw)
    forms = [
        raw,
        json.dumps(secret)[1:-1].encode(),
        urllib.parse.quote(secret, safe="").encode(),
        b64,
        b64.rstrip(b"="),
        base64.b64encode(f"\0{username}\0{secret}".encode()),
        base64.b64encode(f"user={username}\x01auth=Bearer {secret}\x01\x01".encode()),
    ]
    return sorted(set(forms))


async def _scrape_metrics(running: RunningServices) -> list[bytes]:
    pages = []
    async with httpx.AsyncClient(timeout=10) as client:
        for process in running.processes:
            port = (process.env or {})["MBL_HTTP_PORT"]
            page = await client.get(f"http://127.0.0.1:{port}/metrics")
            assert page.status_code == 200, process.name
            pages.append(page.content)
    return pages


# The first run builds the collector (minutes on 2 cores) inside the collector fixture.
@pytest.mark.timeout(1200)
async def test_an_internal_service_sends_and_reads_as_linked_mailboxes_and_nothing_leaks(
    internal_services: RunningServices,
    collector: RunningCollector,
    infra: Endpoints,
    local_stack: LocalStack,
    oauth: LocalOAuthServer,
    browser: Browser,
) -> None:
    running = internal_services
    topic = Topics.for_namespace(NAMESPACE).mailboxes
    start = await topic_end(infra.kafka_bootstrap, topic)
    user = MailUser(f"internal-{unique_user_id()}@example.org", f"Pw-{unique_user_id()}")
    local_stack.add_mail_user(user.address, user.password)
    oauth_address = new_account(oauth, "google")

    async with caller(running.api_url, running) as api:
        linked = await link_and_wait(api, "acme", unique_user_id(), imap_body(infra, user))
        assert linked["status"] == "linked", linked
        oauth_linked, _ = await link_through_sign_in(api, browser, oauth_address)
        assert oauth_linked["status"] == "linked", oauth_linked

    handed_out: list[tuple[str, str]] = []
    async with (
        registry_client(running.registry_url, running.mailer_token) as mailer,
        registry_client(running.registry_url, running.caller_token) as product,
        registry_client(running.registry_url, running.bound_mailer_token) as bound,
    ):
        # The password mailbox, as the internal service learns of it: from the topic.
        async with MailboxEvents(infra.kafka_bootstrap, topic, user.address, start=start) as seen:
            event = await seen.wait_for(is_linked, within=30)
        account, mailbox_id = event.data.owner.account_id, event.data.mailbox_id
        assert mailbox_id == linked["mailbox_id"]
        access = await request_access(mailer, account, mailbox_id)
        assert (access.auth, access.health, access.cache_control) == (
            "password",
            "active",
            "no-store",
        )
        assert access.sasl_mechanisms[0] in ("PLAIN", "LOGIN")
        assert access.imap.password == user.password
        sent = await send_message(access, infra.ca_file)
        found = await find_message(access, infra.ca_file, sent.message_id)
        assert found.subject == sent.subject
        handed_out += [(access.imap.password or "", user.address)]

        # The OAuth mailbox: the token it is given logs in over XOAUTH2, to send and to read.
        async with MailboxEvents(infra.kafka_bootstrap, topic, oauth_address, start=start) as seen:
            oauth_event = await seen.wait_for(is_linked, within=30)
        token_access = await request_access(
            mailer, oauth_event.data.owner.account_id, oauth_event.data.mailbox_id
        )
        assert (token_access.auth, token_access.sasl_mechanisms) == ("oauth", ("XOAUTH2",))
        assert token_access.access_token
        assert token_access.imap.password is None
        local = _on_the_local_oauth_dovecot(token_access, infra)
        sent = await send_message(local, infra.ca_file)
        found = await find_message(local, infra.ca_file, sent.message_id)
        assert found.subject == sent.subject
        handed_out += [(token_access.access_token, oauth_address)]

        # Only keys granted mailbox_access, and only for their accounts.
        with pytest.raises(AccessRefused) as no_scope:
            await request_access(product, account, mailbox_id)
        assert (no_scope.value.status, no_scope.value.code) == (403, "forbidden")
        with pytest.raises(AccessRefused) as elsewhere:
            await request_access(bound, account, mailbox_id)
        # The binding answers before anything is read (docs/adr/0017): the same 404 whether
        # the account has this mailbox, others or none.
        assert (elsewhere.value.status, elsewhere.value.code) == (404, "account_not_found")

    metrics = await _scrape_metrics(running)
    # Stopped (SIGTERM): each service sends its last spans on the way out; stopping the
    # collector writes them to its file.
    running.stop()
    collector.stop()
    spans = [json.dumps(span).encode() for span in collector.spans()]
    assert spans, "the collector received no span"
    records = await read_topics(infra.kafka_bootstrap, NAMESPACE)
    documents = await dump_databases(infra.mongodb_uri, NAMESPACE)
    logs = [path.read_bytes() for path in running.logs.values()]
    assert records
    assert documents
    assert logs
    assert metrics
    for secret, username in handed_out:
        for form in _forms(secret, username):
            assert not [r for r in records if form in r[1] or form in r[2]], "secret in Kafka"
            assert not [d for d in documents if form in d], "secret in MongoDB"
            assert not [line for line in logs if form in line], "secret in a log"
            assert not [page for page in metrics if form in page], "secret in /metrics"
            assert not [span for span in spans if form in span], "secret in a span"
