"""The real stack answers: Kafka, MongoDB protocol, Dovecot (IMAP, POP3, submission), TLS."""

from __future__ import annotations

import asyncio
import imaplib
import poplib
import smtplib
import socket
import ssl
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from pymongo import AsyncMongoClient
from pymongo.errors import DuplicateKeyError

from localinfra import Endpoints, LocalStack

USER, PASSWORD = "alice@example.org", "alice-secret"


@pytest.fixture(scope="module")
def stack(local_stack: LocalStack) -> LocalStack:
    local_stack.add_mail_user(USER, PASSWORD)
    return local_stack


@pytest.fixture(scope="module")
def endpoints(stack: LocalStack) -> Endpoints:
    return stack.endpoints


@pytest.fixture(scope="module")
def tls(endpoints: Endpoints) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=endpoints.ca_file)


async def test_kafka_produce_and_consume(endpoints: Endpoints) -> None:
    topic = f"localinfra-{uuid.uuid4().hex}"
    producer = AIOKafkaProducer(bootstrap_servers=endpoints.kafka_bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"hello", key=b"k")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=endpoints.kafka_bootstrap,
        group_id=f"g-{uuid.uuid4().hex}",
        auto_offset_reset="earliest",
        fetch_max_wait_ms=100,
    )
    await consumer.start()
    try:
        message = await asyncio.wait_for(consumer.getone(), timeout=30)
    finally:
        await consumer.stop()
    assert (message.key, message.value) == (b"k", b"hello")


async def test_mongo_insert_and_find(endpoints: Endpoints) -> None:
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(endpoints.mongodb_uri)
    try:
        collection = client[f"t{uuid.uuid4().hex}"]["things"]
        await collection.insert_one({"_id": "a", "n": 1})
        assert await collection.find_one({"_id": "a"}) == {"_id": "a", "n": 1}
    finally:
        await client.close()


async def test_mongo_unique_index_rejects_duplicate(endpoints: Endpoints) -> None:
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(endpoints.mongodb_uri)
    try:
        collection = client[f"t{uuid.uuid4().hex}"]["links"]
        await collection.create_index("email", unique=True)
        await collection.insert_one({"email": "a@example.org"})
        with pytest.raises(DuplicateKeyError):
            await collection.insert_one({"email": "a@example.org"})
    finally:
        await client.close()


def test_imaps_login(endpoints: Endpoints, tls: ssl.SSLContext) -> None:
    with imaplib.IMAP4_SSL(endpoints.mail_host, endpoints.imaps_port, ssl_context=tls) as imap:
        assert imap.login(USER, PASSWORD)[0] == "OK"
        assert imap.select("INBOX")[0] == "OK"


def test_imap_starttls(endpoints: Endpoints, tls: ssl.SSLContext) -> None:
    assert _banner(endpoints.mail_host, endpoints.imap_starttls_port).startswith(b"* OK")
    with imaplib.IMAP4(endpoints.mail_host, endpoints.imap_starttls_port) as imap:
        assert "STARTTLS" in imap.capabilities
        imap.starttls(ssl_context=tls)
        assert imap.login(USER, PASSWORD)[0] == "OK"


def test_imap_wrong_password_is_refused(endpoints: Endpoints, tls: ssl.SSLContext) -> None:
    with (
        imaplib.IMAP4_SSL(endpoints.mail_host, endpoints.imaps_port, ssl_context=tls) as imap,
        pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"),
    ):
        imap.login(USER, "wrong")


def test_user_added_while_running_can_log_in(
    stack: LocalStack, endpoints: Endpoints, tls: ssl.SSLContext
) -> None:
    user = f"bob-{uuid.uuid4().hex[:8]}@example.org"
    stack.add_mail_user(user, "bob-secret")
    with imaplib.IMAP4_SSL(endpoints.mail_host, endpoints.imaps_port, ssl_context=tls) as imap:
        assert imap.login(user, "bob-secret")[0] == "OK"


def test_pop3_banner_and_login(endpoints: Endpoints, tls: ssl.SSLContext) -> None:
    pop = poplib.POP3(endpoints.mail_host, endpoints.pop3_port, timeout=5)
    try:
        assert pop.getwelcome().startswith(b"+OK")
        pop.stls(context=tls)
        pop.user(USER)
        assert pop.pass_(PASSWORD).startswith(b"+OK")
    finally:
        pop.quit()
    pops = poplib.POP3_SSL(endpoints.mail_host, endpoints.pop3s_port, context=tls, timeout=5)
    try:
        assert pops.getwelcome().startswith(b"+OK")
    finally:
        pops.quit()


def test_pop3_only_server_does_not_speak_imap(endpoints: Endpoints) -> None:
    assert not _banner(endpoints.mail_host, endpoints.pop3_port).startswith(b"* OK")


def test_submission_ehlo_auth_and_relay(endpoints: Endpoints, tls: ssl.SSLContext) -> None:
    with smtplib.SMTP(endpoints.mail_host, endpoints.submission_starttls_port, timeout=5) as smtp:
        code, _ = smtp.ehlo("client.example.org")
        assert code == 250
        assert smtp.has_extn("starttls")
        smtp.starttls(context=tls)
        smtp.login(USER, PASSWORD)
        refused = smtp.sendmail(USER, ["someone@example.com"], b"Subject: t\r\n\r\nbody\r\n")
        assert refused == {}
    with smtplib.SMTP_SSL(
        endpoints.mail_host, endpoints.submissions_port, context=tls, timeout=5
    ) as smtps:
        assert smtps.login(USER, PASSWORD)[0] == 235


@pytest.mark.parametrize("kind", ["imaps", "submissions"])
def test_untrusted_server_fails_verification(
    endpoints: Endpoints, tls: ssl.SSLContext, kind: str
) -> None:
    port = (
        endpoints.untrusted_imaps_port if kind == "imaps" else endpoints.untrusted_submissions_port
    )
    with (
        socket.create_connection((endpoints.mail_host, port), timeout=5) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        tls.wrap_socket(raw, server_hostname=endpoints.tls_hostname)


def test_closed_port_refuses(endpoints: Endpoints) -> None:
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((endpoints.mail_host, endpoints.closed_port), timeout=5)


def test_endpoints_json_round_trip(endpoints: Endpoints) -> None:
    assert Endpoints.from_json(endpoints.to_json()) == endpoints


def _banner(host: str, port: int) -> bytes:
    with socket.create_connection((host, port), timeout=5) as sock:
        return sock.recv(1024)
