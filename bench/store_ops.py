"""`make bench`: single-document operations on each local store, at two collection sizes.

Backends (each a fresh server in a temp dir, started by localinfra.mongo.MongoServer):
- ferretdb-sqlite: FerretDB 1.24 on SQLite (MBL_LOCAL_STORE=ferretdb-sqlite);
- ferretdb-postgresql-plain: FerretDB on PostgreSQL without the _id GIN trigger and with
  PostgreSQL's default plan_cache_mode (what FerretDB on PostgreSQL gives by itself);
- ferretdb-postgresql: as localinfra configures it (the default local store, docs/adr/0012).

For each backend and size (1,000 and 100,000 link-like documents of ~290 BSON bytes, filled
with insert_many in batches of 1,000), one connection, one operation at a time: p50 and p90
over --ops operations (after --warmup of the same kind) of insert of a new _id, find of an
existing _id, find of a missing _id, update_one by _id with $set, update_one by _id plus one
more equality field, delete_one by _id. On PostgreSQL the table's seq_scan/idx_scan counters
(pg_stat_user_tables) around each operation kind show which plan actually ran.

Then a concurrency check: 200 concurrent $inc of one document from 16 connections (how many
increments were kept) and 100 concurrent inserts of one _id (how many won).

Figures to bench/results/store-ops.json, ratios 100k/1k per operation included; a table
printed.
"""

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bson
from pymongo import AsyncMongoClient, MongoClient
from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError

from localinfra.mongo import MongoServer
from localinfra.postgres import PostgresCluster

RESULTS = Path(__file__).resolve().parent / "results"
BACKENDS: dict[str, tuple[str, bool]] = {  # name: (MongoServer backend, postgres_id_index)
    "ferretdb-sqlite": ("ferretdb-sqlite", True),
    "ferretdb-postgresql-plain": ("ferretdb-postgresql", False),
    "ferretdb-postgresql": ("ferretdb-postgresql", True),
}
OPERATIONS = (
    "insert_new_id",
    "find_existing_id",
    "find_missing_id",
    "update_by_id",
    "update_by_id_and_field",
    "delete_by_id",
)
DATABASE, COLLECTION = "bench", "links"
Doc = dict[str, Any]


def link_id(i: int) -> str:
    return f"lnk-{uuid.UUID(int=i + 1).hex}"


def link(i: int) -> Doc:
    """A small link record (~290 BSON bytes)."""
    at = datetime(2026, 12, 1, tzinfo=UTC)
    return {
        "_id": link_id(i),
        "account_id": "acme",
        "user_id": f"u{i % 997}",
        "address": f"user{i}@example.org",
        "provider": "imap",
        "state": "linked",
        "mailbox_id": uuid.UUID(int=i + 10**9).hex,
        "imap_host": "imap.example.org",
        "created_at": at,
        "updated_at": at,
        "version": 1,
    }


def fill(collection: Collection[Doc], size: int) -> float:
    """Insert ``size`` links in batches of 1,000; return the seconds it took."""
    began = time.perf_counter()
    for start in range(0, size, 1000):
        collection.insert_many([link(i) for i in range(start, min(size, start + 1000))])
    return time.perf_counter() - began


def timed(operation: Callable[[int], object], count: int, offset: int = 0) -> list[float]:
    samples = []
    for i in range(count):
        began = time.perf_counter()
        operation(offset + i)
        samples.append(time.perf_counter() - began)
    return samples


class ScanCounters:
    """pg_stat_user_tables counters of the collection's table (PostgreSQL backends only)."""

    # FerretDB keeps database "bench" in schema "bench", and which table holds collection
    # "links" in its metadata table there.
    QUERY = """
        SELECT s.seq_scan, coalesce(s.idx_scan, 0)
        FROM pg_stat_user_tables AS s
        JOIN bench._ferretdb_database_metadata AS m ON m._jsonb->>'table' = s.relname
        WHERE s.schemaname = 'bench' AND m._jsonb->>'_id' = 'links'
    """

    def __init__(self, cluster: PostgresCluster) -> None:
        self.cluster = cluster

    def read(self) -> tuple[int, int]:
        # A backend flushes its counters at most once a second, and one that goes idle with
        # counters it could not flush yet does so 10 s later (PGSTAT_IDLE_INTERVAL).
        time.sleep(11)
        seq, idx = self.cluster.psql(self.QUERY).strip().split("|")
        return int(seq), int(idx)


def measure_operations(
    collection: Collection[Doc], size: int, ops: int, warmup: int
) -> dict[str, Any]:
    rng = random.Random(size)
    per_kind = ops + warmup
    # The last per_kind documents are deleted; the others are found and updated at random.
    deletable = list(range(size - per_kind, size))
    present = [link_id(rng.randrange(size - per_kind)) for _ in range(per_kind)]
    runs: dict[str, Callable[[int], object]] = {
        "insert_new_id": lambda i: collection.insert_one(link(size + i)),
        "find_existing_id": lambda i: collection.find_one({"_id": present[i]}),
        "find_missing_id": lambda i: collection.find_one({"_id": f"missing-{i}"}),
        "update_by_id": lambda i: collection.update_one(
            {"_id": present[i]}, {"$set": {"version": i + 2}}
        ),
        "update_by_id_and_field": lambda i: collection.update_one(
            {"_id": present[i], "account_id": "acme"}, {"$set": {"state": "linked", "v": i}}
        ),
        "delete_by_id": lambda i: collection.delete_one({"_id": link_id(deletable[i])}),
    }
    results: dict[str, Any] = {}
    for name in OPERATIONS:
        run = runs[name]
        timed(run, warmup)
        samples = sorted(timed(run, ops, warmup))
        results[name] = {
            "p50_ms": round(statistics.median(samples) * 1000, 2),
            "p90_ms": round(samples[int(len(samples) * 0.9) - 1] * 1000, 2),
            "operations": ops,
        }
    return results


async def concurrency_check(uri: str) -> dict[str, Any]:
    client: AsyncMongoClient[Doc] = AsyncMongoClient(
        uri, directConnection=True, maxPoolSize=16, minPoolSize=16
    )
    try:
        collection = client[DATABASE]["concurrency"]
        await collection.insert_one({"_id": "counter", "n": 0})
        await asyncio.gather(*(collection.find_one({"_id": "counter"}) for _ in range(32)))
        await asyncio.gather(
            *(collection.update_one({"_id": "counter"}, {"$inc": {"n": 1}}) for _ in range(200))
        )
        kept = (await collection.find_one({"_id": "counter"}) or {}).get("n")

        async def insert() -> bool:
            try:
                await collection.insert_one({"_id": "contested", "by": uuid.uuid4().hex})
            except DuplicateKeyError:
                return False
            return True

        won = sum(await asyncio.gather(*(insert() for _ in range(100))))
        stored = await collection.count_documents({"_id": "contested"})
    finally:
        await client.close()
    return {
        "inc_concurrent": 200,
        "inc_kept": kept,
        "duplicate_inserts": 100,
        "duplicate_inserts_won": won,
        "duplicate_documents_stored": stored,
    }


def run_backend(name: str, size: int, ops: int, warmup: int, root: Path) -> dict[str, Any]:
    backend, id_index = BACKENDS[name]
    server = MongoServer(root / f"{name}-{size}", backend, postgres_id_index=id_index)
    uri = server.start()
    client: MongoClient[Doc] = MongoClient(uri, directConnection=True, maxPoolSize=1)
    try:
        collection = client[DATABASE][COLLECTION]
        fill_seconds = fill(collection, size)
        print(f"{name} {size:,}: filled in {fill_seconds:.1f} s", file=sys.stderr, flush=True)
        counters = ScanCounters(server.postgres) if server.postgres is not None else None
        before = counters.read() if counters else (0, 0)
        operations = measure_operations(collection, size, ops, warmup)
        # Over every operation above (warm-ups included): which plans PostgreSQL really ran.
        after = counters.read() if counters else (0, 0)
        concurrency = asyncio.run(concurrency_check(uri))
    finally:
        client.close()
        server.stop()
    result: dict[str, Any] = {
        "fill_seconds": round(fill_seconds, 2),
        "fill_docs_per_s": round(size / fill_seconds),
        "operations": operations,
        "concurrency": concurrency,
    }
    if counters is not None:
        result["table_scans_during_operations"] = {
            "operations": len(OPERATIONS) * (ops + warmup),
            "seq_scan": after[0] - before[0],
            "idx_scan": after[1] - before[1],
        }
    return result


def ratios(runs: dict[str, Any], small: int, large: int) -> dict[str, float]:
    return {
        op: round(
            runs[str(large)]["operations"][op]["p50_ms"]
            / runs[str(small)]["operations"][op]["p50_ms"],
            2,
        )
        for op in OPERATIONS
    }


def table(result: dict[str, Any], small: int, large: int) -> str:
    labels = [f"p{q} {size // 1000}k" for size in (small, large) for q in (50, 90)]
    head = f"{'operation (ms)':24} {'backend':26} " + " ".join(
        f"{label:>9}" for label in [*labels, f"{large // 1000}k/{small // 1000}k"]
    )
    lines = [head, "-" * len(head)]
    for op in OPERATIONS:
        for name, runs in result["backends"].items():
            cells = []
            for size in (small, large):
                entry = runs.get(str(size), {}).get("operations", {}).get(op)
                if entry:
                    cells += [f"{entry['p50_ms']:9.2f}", f"{entry['p90_ms']:9.2f}"]
                else:
                    cells += ["-".rjust(9)] * 2
            ratio = runs.get("ratio_p50_large_to_small", {}).get(op)
            cells.append(f"{ratio:9.2f}" if ratio is not None else "-".rjust(9))
            lines.append(f"{op:24} {name:26} " + " ".join(cells))
    lines.append("")
    lines.append(f"{'concurrency':24} {'backend':26} {'size':>9} {'$inc kept':>9} {'dup won':>9}")
    for name, runs in result["backends"].items():
        for size in (small, large):
            check = runs.get(str(size), {}).get("concurrency")
            if check:
                lines.append(
                    f"{'':24} {name:26} {size:9,} {check['inc_kept']:>6}/200 "
                    f"{check['duplicate_inserts_won']:>6}/100"
                )
    lines.append("")
    lines.append(
        f"{'PostgreSQL table scans':24} {'backend':26} {'size':>9} {'seq':>9} {'index':>9}"
    )
    for name, runs in result["backends"].items():
        for size in (small, large):
            scans = runs.get(str(size), {}).get("table_scans_during_operations")
            if scans:
                lines.append(
                    f"{str(scans['operations']) + ' operations':24} {name:26} {size:9,} "
                    f"{scans['seq_scan']:9} {scans['idx_scan']:9}"
                )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backends", nargs="+", choices=list(BACKENDS), default=list(BACKENDS))
    parser.add_argument("--sizes", type=int, nargs=2, default=[1000, 100_000])
    parser.add_argument("--ops", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--output", type=Path, default=RESULTS / "store-ops.json")
    parser.add_argument(
        "--sqlite-large",
        action="store_true",
        help="also run SQLite at the large size (every _id operation scans: ~1 h at 100,000)",
    )
    args = parser.parse_args()
    small, large = sorted(args.sizes)
    result: dict[str, Any] = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "sizes": [small, large],
        "operations_per_kind": args.ops,
        "warmup_per_kind": args.warmup,
        "connections": 1,
        "document_bson_bytes": len(bson.encode(link(0))),
        "backends": {},
    }
    with tempfile.TemporaryDirectory(prefix="mbl-store-bench-") as tmp:
        root = Path(tmp)
        root.chmod(0o755)  # PostgreSQL runs as user postgres and must reach its directory
        for name in args.backends:
            runs: dict[str, Any] = {}
            skip_large = name == "ferretdb-sqlite" and not args.sqlite_large
            for size in (small,) if skip_large else (small, large):
                runs[str(size)] = run_backend(name, size, args.ops, args.warmup, root)
            if skip_large:
                runs[str(large)] = {"skipped": "slow: run with --sqlite-large"}
            else:
                runs["ratio_p50_large_to_small"] = ratios(runs, small, large)
            result["backends"][name] = runs
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result, small, large))
    print(f"written to {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
