"""Kafka and the MongoDB-protocol server stop and start again on their data and their ports:
what an outage test needs. Private servers (not the session's stack), so nothing else is hit."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from pymongo import MongoClient
from pymongo.errors import PyMongoError

from localinfra.kafka import KafkaServer
from localinfra.mongo import MongoServer, mongo_backend
from localinfra.ports import port_is_open

pytestmark = pytest.mark.connected

Client = MongoClient[dict[str, Any]]


@pytest.fixture
def kafka(tmp_path: Path) -> Iterator[KafkaServer]:
    server = KafkaServer(tmp_path / "kafka", heap_mb=384)
    server.start()
    yield server
    server.stop()


async def _produce(bootstrap: str, topic: str, value: bytes) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        # One key, one partition: the auto-created topic may have several, and only within a
        # partition are records read back in the order they were written.
        await producer.send_and_wait(topic, value, key=b"restart")
    finally:
        await producer.stop()


async def _read_all(bootstrap: str, topic: str, count: int) -> list[bytes]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    values: list[bytes] = []
    try:
        async with asyncio.timeout(30):
            while len(values) < count:
                record = await consumer.getone()
                assert record.value is not None
                values.append(record.value)
    finally:
        await consumer.stop()
    return values


def test_kafka_restarts_on_its_data_and_port(kafka: KafkaServer) -> None:
    topic = f"restart-{uuid.uuid4().hex}"
    bootstrap = kafka.bootstrap
    asyncio.run(_produce(bootstrap, topic, b"before"))
    format_log = (kafka.workdir / "format.log").read_text()

    kafka.stop()
    assert not port_is_open("127.0.0.1", kafka.port)
    assert kafka.restart() == bootstrap

    asyncio.run(_produce(bootstrap, topic, b"after"))
    assert asyncio.run(_read_all(bootstrap, topic, 2)) == [b"before", b"after"]
    # Not formatted again: the format tool ran once (its log was not rewritten).
    assert (kafka.workdir / "format.log").read_text() == format_log


def test_mongo_server_restarts_on_its_data_and_port() -> None:
    if mongo_backend() == "external":
        pytest.fail("MONGODB_URI is set: the external MongoDB is not ours to stop")
    # Not pytest's tmp_path: its 0700 parents keep out PostgreSQL's user (behind FerretDB).
    root = Path(tempfile.mkdtemp(prefix="mbl-restart-"))
    root.chmod(0o755)
    server = MongoServer(root / "mongo")
    uri = server.start()
    try:
        with Client(uri, serverSelectionTimeoutMS=5000) as client:
            client["restart"]["docs"].insert_one({"_id": "kept"})
        server.pause()
        with (
            Client(uri, serverSelectionTimeoutMS=300) as client,
            pytest.raises(PyMongoError),
        ):
            client.admin.command("ping")
        assert server.resume() == uri
        with Client(uri, serverSelectionTimeoutMS=5000) as client:
            assert client["restart"]["docs"].find_one({"_id": "kept"}) == {"_id": "kept"}
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
