"""The verifiers' side of health checks (docs/adr/0023) as processes, on real Kafka: a test plays
the registry, publishes MailboxCheckRequested on the mailbox-checks topic and reads the
MailboxChecked the imap-verifier (password mailboxes, the real Dovecot) or the oauth-broker
(OAuth mailboxes, the OAuth Dovecot and the local authorization server) answers. No password
or token appears on any topic or in any log."""

import asyncio
import contextlib
import json
import secrets
import socket
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import SecretStr
from pymongo import AsyncMongoClient

from localinfra.registry_driver import EventSender
from localinfra.services import RunningServices, ServiceConfig
from localinfra.stack import Endpoints, LocalStack
from mailbox_link_contract.events import (
    AuthMethod,
    MailboxChecked,
    MailboxCheckRequested,
    MailboxCheckRequestedData,
    MailboxOwner,
    ProviderType,
    ServerSettings,
    utc_now,
)
from mailbox_link_contract.failures import FailureCode, refuses_credentials
from mailbox_link_contract.reading import read_event
from mailbox_link_contract.topics import EVENT_MODELS, Topics
from mailbox_link_shared.crypto import SecretBox
from oauth_broker.adapters.broker_store import MongoBrokerStore
from oauth_broker.domain.grants import GrantStatus, StoredGrant, TokenGrant

from .conftest import running_services, service_config
from .probes import read_topics

NAMESPACE = "e2e-health-checks"
OWNER = MailboxOwner(account_id="acme", user_id="u-checks")


@pytest.fixture(scope="module")
def config(infra: Endpoints) -> ServiceConfig:
    return service_config(infra, namespace=NAMESPACE)


@pytest.fixture(scope="module")
def verifiers(
    config: ServiceConfig, workdir: Path, local_stack: LocalStack
) -> Iterator[RunningServices]:
    with running_services(
        config, workdir / NAMESPACE, local_stack.oauth_server, ("imap_verifier", "oauth_broker")
    ) as running:
        yield running


class ChecksTopic:
    """Follows the mailbox-checks topic from its beginning; finds MailboxChecked by check id."""

    def __init__(self, bootstrap: str) -> None:
        self._topic = Topics.for_namespace(NAMESPACE).mailbox_checks
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=100
        )
        self._answers: dict[str, MailboxChecked] = {}
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> "ChecksTopic":
        await self._consumer.start()
        await self._consumer._client.force_metadata_update()
        partitions = self._consumer.partitions_for_topic(self._topic) or set()
        assigned = [TopicPartition(self._topic, p) for p in partitions]
        assert assigned, f"no partitions of {self._topic}"
        self._consumer.assign(assigned)
        await self._consumer.seek_to_beginning(*assigned)
        self._task = asyncio.create_task(self._follow())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._consumer.stop()

    async def _follow(self) -> None:
        while True:
            batch = await self._consumer.getmany(timeout_ms=200)
            for records in batch.values():
                for record in records:
                    event = read_event(record.value or b"", EVENT_MODELS)
                    if isinstance(event, MailboxChecked):
                        self._answers.setdefault(event.data.check_id, event)

    async def answer(self, check_id: str, seconds: float = 60) -> MailboxChecked:
        """The first MailboxChecked of the check; fails after `seconds` without one."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while check_id not in self._answers:
            assert loop.time() < deadline, f"no MailboxChecked for {check_id}"
            await asyncio.sleep(0.1)
        return self._answers[check_id]


def _box(config: ServiceConfig) -> SecretBox:
    return SecretBox({"k1": SecretStr(config.encryption_key)}, "k1")


def _requested(
    address: str,
    imap: ServerSettings,
    smtp: ServerSettings,
    auth: AuthMethod,
    provider: ProviderType,
    **more: Any,
) -> MailboxCheckRequested:
    mailbox_id = more.pop("mailbox_id", f"m-{secrets.token_hex(6)}")
    link_id = more.pop("link_id", f"l-{secrets.token_hex(6)}")
    data = MailboxCheckRequestedData(
        check_id=f"{mailbox_id}-{secrets.token_hex(3)}", mailbox_id=mailbox_id, link_id=link_id,
        owner=OWNER, address=address, provider=provider, auth=auth, imap=imap, smtp=smtp, **more,
    )  # fmt: skip
    return MailboxCheckRequested(correlation_id=link_id, producer="registry", data=data)


async def _check(
    infra: Endpoints, topic: ChecksTopic, request: MailboxCheckRequested
) -> MailboxChecked:
    async with EventSender(infra.kafka_bootstrap, NAMESPACE) as sender:
        await sender.send([request])
    answer = await topic.answer(request.data.check_id)
    assert answer.data.mailbox_id == request.data.mailbox_id
    return answer


async def _nowhere(infra: Endpoints, services: RunningServices, secrets_: list[str]) -> None:
    """None of the secrets is on any topic of the namespace or in any service's log."""
    records = await read_topics(infra.kafka_bootstrap, NAMESPACE)
    for secret in secrets_:
        assert not any(secret.encode() in value for _, _, value in records)
        for log in services.logs.values():
            assert secret not in log.read_text(errors="replace")


async def test_a_password_mailbox_is_checked_by_the_imap_verifier(
    verifiers: RunningServices, config: ServiceConfig, infra: Endpoints, local_stack: LocalStack
) -> None:
    address, password = f"kcheck-{secrets.token_hex(4)}@example.org", secrets.token_urlsafe(14)
    local_stack.add_mail_user(address, password)
    imap = ServerSettings(
        host=infra.tls_hostname, port=infra.imaps_port, security="ssl", username=address
    )
    smtp = imap.model_copy(update={"port": infra.submissions_port})
    sealed = _box(config).seal(
        json.dumps({"imap_password": password, "smtp_password": password}), address
    )

    def request(on: ServerSettings = imap) -> MailboxCheckRequested:
        return _requested(
            address, on, smtp, AuthMethod.PASSWORD, ProviderType.IMAP, credentials=sealed
        )

    new_password = secrets.token_urlsafe(14)
    async with ChecksTopic(infra.kafka_bootstrap) as topic:
        ok = await _check(infra, topic, request())
        assert ok.data.failure is None
        assert ok.producer == "imap-verifier"

        local_stack.set_mail_password(address, new_password)  # the user changed it
        refused = await _check(infra, topic, request())
        assert refused.data.failure is not None
        assert refused.data.failure.code is FailureCode.IMAP_AUTH_FAILED
        assert refuses_credentials(refused.data.failure.code)

        with_closed_port = imap.model_copy(update={"port": _closed_port()})
        away = await _check(infra, topic, request(with_closed_port))
        assert away.data.failure is not None
        assert away.data.failure.code in (FailureCode.IMAP_UNREACHABLE, FailureCode.TIMEOUT)
        assert not refuses_credentials(away.data.failure.code)
    await _nowhere(infra, verifiers, [password, new_password])


async def test_an_oauth_mailbox_is_checked_by_the_broker(
    verifiers: RunningServices, config: ServiceConfig, infra: Endpoints, local_stack: LocalStack
) -> None:
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(infra.mongodb_uri, tz_aware=True)
    store = MongoBrokerStore(mongo, f"{NAMESPACE}-oauth-broker")
    box = _box(config)
    address = f"kcheck-{secrets.token_hex(4)}@example.org"
    access_token, stale_token = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    local_stack.grant_oauth_token(access_token, address)

    async def linked(expires_in: timedelta, access: str, refresh: str) -> StoredGrant:
        """A linked mailbox's grant as the broker keeps it (its sign-in is another test's)."""
        now = utc_now()
        tokens = TokenGrant(access, refresh, now + expires_in, frozenset({"mail-r"}))
        grant = StoredGrant(
            f"l-{secrets.token_hex(6)}", OWNER, address, ProviderType.YAHOO, GrantStatus.ACTIVE,
            tokens.expires_at, box.seal(tokens.to_json(), context=address), verified_at=now,
            mailbox_id=f"m-{secrets.token_hex(6)}",
        )  # fmt: skip
        await store.save_grant(grant)
        return grant

    imap = ServerSettings(
        host=infra.tls_hostname, port=infra.oauth_imaps_port, security="ssl", username=address
    )
    smtp = imap.model_copy(update={"port": infra.oauth_submissions_port})

    def request(grant: StoredGrant) -> MailboxCheckRequested:
        return _requested(
            address, imap, smtp, AuthMethod.OAUTH, ProviderType.YAHOO,
            mailbox_id=grant.mailbox_id, link_id=grant.link_id,
        )  # fmt: skip

    unknown_refresh = secrets.token_urlsafe(24)
    try:
        fresh = await linked(timedelta(hours=1), access_token, secrets.token_urlsafe(24))
        # Due for a refresh, whose refresh token the provider does not know (revoked).
        revoked = await linked(timedelta(seconds=0), stale_token, unknown_refresh)
        async with ChecksTopic(infra.kafka_bootstrap) as topic:
            ok = await _check(infra, topic, request(fresh))
            assert ok.data.failure is None
            assert ok.producer == "oauth-broker"

            gone = await _check(infra, topic, request(revoked))
            assert gone.data.failure is not None
            assert gone.data.failure.code is FailureCode.RECONNECT_REQUIRED
        kept = await store.get_grant(revoked.link_id)
        assert kept is not None
        assert kept.status is GrantStatus.RECONNECT_REQUIRED
    finally:
        local_stack.revoke_oauth_token(access_token)
        await mongo.close()
    await _nowhere(infra, verifiers, [access_token, stale_token, unknown_refresh])


def _closed_port() -> int:
    """A loopback port in the allowed (ephemeral) range where nothing listens any more."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
