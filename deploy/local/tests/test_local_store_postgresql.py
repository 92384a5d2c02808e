"""The local stack's store: FerretDB on the stack's own PostgreSQL cluster (docs/adr/0012).

Against the real servers: FerretDB answers ping and keeps its documents in the cluster;
concurrent inserts of one _id leave one winner; a find by _id is an index lookup, both as
psql's EXPLAIN of FerretDB's own statement and in the table's scan counters while FerretDB
serves finds. The backend choice itself is checked without servers.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient
from pymongo.errors import DuplicateKeyError

from localinfra import LocalStack
from localinfra.docker import docker_available
from localinfra.mongo import (
    FERRETDB_POSTGRESQL,
    FERRETDB_SQLITE,
    LOCAL_STORE_ENV,
    mongo_backend,
)
from localinfra.postgres import run_psql, running_port

Doc = dict[str, Any]

# What FerretDB 1.24's postgresql backend sends for find({"_id": ...}) (backends/postgresql:
# prepareSelectClause + filterEqual), as a pgx cached prepared statement.
FIND_BY_ID = 'SELECT  _jsonb FROM :"schema".:"table" WHERE _jsonb->$1 @> $2'
TABLE_OF = """
    SELECT _jsonb->>'table' FROM :"schema"._ferretdb_database_metadata
    WHERE _jsonb->>'_id' = :'collection'
"""


def _stack_store_is_ours() -> bool:
    try:
        return mongo_backend() == FERRETDB_POSTGRESQL and not docker_available()
    except ValueError:
        return False


on_postgresql = pytest.mark.skipif(
    not _stack_store_is_ours(), reason="the stack's store is not FerretDB on local PostgreSQL"
)


@pytest.fixture(scope="module")
def pg_port(local_stack: LocalStack) -> int:
    return running_port(Path(local_stack.endpoints.workdir) / "mongo" / "postgres")


@pytest.fixture
async def client(local_stack: LocalStack) -> AsyncIterator[AsyncMongoClient[Doc]]:
    client: AsyncMongoClient[Doc] = AsyncMongoClient(
        local_stack.endpoints.mongodb_uri, maxPoolSize=16
    )
    try:
        yield client
    finally:
        await client.close()


def _psql(port: int, sql: str, **variables: str) -> str:
    return run_psql(port, sql, variables=variables).strip()


def _table(port: int, schema: str, collection: str) -> str:
    table = _psql(port, TABLE_OF, schema=schema, collection=collection)
    assert table, f"FerretDB keeps no table for {schema}.{collection} in PostgreSQL"
    return table


@on_postgresql
async def test_store_answers_ping_and_keeps_documents_in_postgresql(
    client: AsyncMongoClient[Doc], pg_port: int
) -> None:
    assert (await client.admin.command("ping"))["ok"] == 1.0
    database = f"t{uuid.uuid4().hex}"
    await client[database]["things"].insert_one({"_id": "a", "n": 41})
    table = _table(pg_port, database, "things")
    stored = _psql(
        pg_port, """SELECT _jsonb->>'n' FROM :"schema".:"table" """, schema=database, table=table
    )
    assert stored == "41"
    ferretdb_sessions = _psql(
        pg_port, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'FerretDB'"
    )
    assert int(ferretdb_sessions) >= 1


@on_postgresql
async def test_concurrent_inserts_of_one_id_leave_one_winner(
    client: AsyncMongoClient[Doc],
) -> None:
    collection = client[f"t{uuid.uuid4().hex}"]["links"]
    await collection.insert_one({"_id": "warm"})  # the table exists before the race

    async def insert(i: int) -> bool:
        try:
            await collection.insert_one({"_id": "contested", "by": i})
        except DuplicateKeyError:
            return False
        return True

    outcomes = await asyncio.gather(*(insert(i) for i in range(100)))
    assert sum(outcomes) == 1
    assert await collection.count_documents({"_id": "contested"}) == 1


@on_postgresql
async def test_find_by_id_is_an_index_lookup(client: AsyncMongoClient[Doc], pg_port: int) -> None:
    database = f"t{uuid.uuid4().hex}"
    collection = client[database]["links"]
    await collection.insert_many(
        [
            {"_id": f"lnk-{i:05d}", "address": f"u{i}@example.org", "pad": "x" * 200}
            for i in range(2000)
        ]
    )
    table = _table(pg_port, database, "links")
    assert _psql(pg_port, "SHOW plan_cache_mode") == "force_custom_plan"
    indexes = _psql(
        pg_port,
        "SELECT indexdef FROM pg_indexes WHERE schemaname = :'schema' AND tablename = :'table'",
        schema=database,
        table=table,
    )
    gin = [line for line in indexes.splitlines() if "USING gin" in line]
    assert gin, indexes
    assert "jsonb_path_ops" in gin[0]
    assert "(_jsonb -> '_id'::text)" in gin[0]

    # What FerretDB really runs: the table's counters while it serves finds by _id. Building
    # an index reads the table once, which PostgreSQL counts as a sequential scan: those are
    # the only ones.
    builds = len(indexes.splitlines())
    finds = 30
    for i in range(finds):
        assert await collection.find_one({"_id": f"lnk-{i * 50:05d}"}) is not None
    seq, idx = _scan_counters(pg_port, database, table, at_least=(builds, finds))
    assert (seq, idx) == (builds, finds)

    # FerretDB's statement, prepared as pgx prepares it and executed past the five runs
    # after which PostgreSQL may switch a prepared statement to a generic plan.
    plan = _psql(
        pg_port,
        f"PREPARE find_by_id(text, jsonb) AS {FIND_BY_ID};\n"
        + "EXECUTE find_by_id('_id', '\"lnk-00007\"');\n" * 8
        + "EXPLAIN (COSTS OFF) EXECUTE find_by_id('_id', '\"lnk-00007\"');",
        schema=database,
        table=table,
    )
    assert "Index Scan" in plan, plan
    assert "Seq Scan" not in plan, plan


def _scan_counters(
    port: int, schema: str, table: str, at_least: tuple[int, int], timeout: float = 25.0
) -> tuple[int, int]:
    """The table's (seq_scan, idx_scan) once both reached ``at_least`` (or at the timeout): a
    backend publishes its counters when idle, up to 10 s late (PGSTAT_IDLE_INTERVAL)."""
    deadline = time.monotonic() + timeout
    while True:
        row = _psql(
            port,
            "SELECT seq_scan, coalesce(idx_scan, 0) FROM pg_stat_user_tables"
            " WHERE schemaname = :'schema' AND relname = :'table'",
            schema=schema,
            table=table,
        )
        seq, idx = (int(value) for value in row.split("|"))
        if (seq >= at_least[0] and idx >= at_least[1]) or time.monotonic() > deadline:
            return seq, idx
        time.sleep(0.5)


def test_backend_choice(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MONGODB_URI", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no mongod here
    monkeypatch.delenv(LOCAL_STORE_ENV, raising=False)
    assert mongo_backend() == FERRETDB_POSTGRESQL
    monkeypatch.setenv(LOCAL_STORE_ENV, FERRETDB_SQLITE)
    assert mongo_backend() == FERRETDB_SQLITE
    monkeypatch.setenv(LOCAL_STORE_ENV, "ferretdb")
    with pytest.raises(ValueError, match="ferretdb-postgresql"):
        mongo_backend()
    monkeypatch.setenv("MONGODB_URI", "mongodb://db.example.org/")
    assert mongo_backend() == "external"
