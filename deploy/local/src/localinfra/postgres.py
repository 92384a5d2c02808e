"""A throwaway PostgreSQL cluster for FerretDB's ``postgresql`` backend (docs/adr/0012).

``initdb`` into the work dir, then ``postgres`` in the foreground as a ``ManagedProcess``, as
the ``postgres`` system user when we are root (PostgreSQL refuses to run as root), listening
on 127.0.0.1 on a free port and on a unix socket in the work dir. Durability is off
(``fsync``, ``synchronous_commit``, ``full_page_writes``): a crash loses the cluster, which a
test store may. The binaries come from Debian's ``postgresql-15`` (/usr/lib/postgresql/*/bin).

FerretDB 1.24 pushes an equality filter down as ``_jsonb->$1 @> $2`` (containment, the key a
bind parameter), while its own indexes, the unique ``_id`` one included, are btrees on
``((_jsonb->'_id'))``, which cannot serve ``@>``: every find by ``_id`` would scan the whole
table. So the cluster gets an event trigger that gives every table FerretDB creates a GIN
index on ``(_jsonb->'_id') jsonb_path_ops``, and ``plan_cache_mode = force_custom_plan`` so
the ``$1`` key of FerretDB's cached prepared statements is folded into a constant and the
expression index matches (a generic plan, which PostgreSQL settles on after five executions,
cannot use it).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from localinfra.apt import install_packages
from localinfra.cache import InstallResult
from localinfra.ports import free_port
from localinfra.procs import ManagedProcess, ServerFailedError, wait_until_ready

APT_PACKAGES = ("postgresql-15",)
_DEBIAN_ROOT = Path("/usr/lib/postgresql")
SUPERUSER = "postgres"
DATABASE = "ferretdb"
# A unix socket's path (dir + "/.s.PGSQL.<port>") must fit in sun_path (108 bytes).
_MAX_SOCKET_DIR = 90

# For a throwaway store on 2 shared cores. Durability off; no JIT (compiling a big scan costs
# tens of ms) and no parallel workers (they fight the other servers for the 2 cores); a small
# buffer pool; WAL kept minimal and checkpoints rare during bulk loads.
SETTINGS: Mapping[str, str] = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "wal_level": "minimal",
    "max_wal_senders": "0",
    "max_wal_size": "1GB",
    "shared_buffers": "64MB",
    "max_connections": "100",  # FerretDB's pool takes up to 50
    "jit": "off",
    "max_parallel_workers_per_gather": "0",
    "timezone": "UTC",
    "logging_collector": "off",  # stderr goes to the log file in the work dir
    "log_min_messages": "warning",
    "log_line_prefix": "'%m [%p] '",
}
# Only with the _id index: without it, custom plans only cost planning time.
ID_INDEX_SETTINGS: Mapping[str, str] = {"plan_cache_mode": "force_custom_plan"}

ID_INDEX_TRIGGER = "mbl_ferretdb_id_gin"
# Runs after every CREATE TABLE, in the creating transaction. FerretDB keeps one schema per
# MongoDB database, a metadata table "_ferretdb_database_metadata" in each, and one table per
# collection with the document in column "_jsonb". fastupdate = off: with GIN's pending list
# every lookup also scans the list of recent inserts (0.9 ms instead of 0.02 ms at 20,000
# documents just after a bulk insert).
ID_INDEX_TRIGGER_SQL = """
CREATE FUNCTION public.mbl_ferretdb_id_gin() RETURNS event_trigger
LANGUAGE plpgsql AS $$
DECLARE
  created record;
BEGIN
  FOR created IN
    SELECT c.objid::regclass AS tbl, c.schema_name
    FROM pg_event_trigger_ddl_commands() AS c
    WHERE c.command_tag = 'CREATE TABLE' AND c.object_type = 'table'
  LOOP
    CONTINUE WHEN created.schema_name IN ('pg_catalog', 'information_schema', 'public');
    CONTINUE WHEN (SELECT relname FROM pg_class WHERE oid = created.tbl) LIKE '\\_ferretdb\\_%';
    CONTINUE WHEN NOT EXISTS (
      SELECT 1 FROM pg_attribute
      WHERE attrelid = created.tbl AND attname = '_jsonb' AND atttypid = 'jsonb'::regtype
    );
    EXECUTE format(
      'CREATE INDEX ON %s USING gin ((_jsonb -> ''_id'') jsonb_path_ops) WITH (fastupdate = off)',
      created.tbl
    );
  END LOOP;
END
$$;
CREATE EVENT TRIGGER mbl_ferretdb_id_gin ON ddl_command_end
  WHEN TAG IN ('CREATE TABLE') EXECUTE FUNCTION public.mbl_ferretdb_id_gin();
"""


def postgres_bin_dir() -> Path | None:
    """The newest /usr/lib/postgresql/<version>/bin holding ``postgres`` and ``initdb``."""
    found: list[tuple[int, Path]] = []
    for bin_dir in _DEBIAN_ROOT.glob("*/bin"):
        version = bin_dir.parent.name
        if not version.isdigit():
            continue
        if all(os.access(bin_dir / tool, os.X_OK) for tool in ("postgres", "initdb", "psql")):
            found.append((int(version), bin_dir))
    return max(found)[1] if found else None


def install_postgres() -> InstallResult:
    """Install Debian's ``postgresql-15`` unless some /usr/lib/postgresql/*/bin is there.

    Installing the package also creates (and on a machine with systemd starts) Debian's own
    cluster 15/main on port 5432; localinfra never uses it.
    """
    started = time.monotonic()
    found = postgres_bin_dir()
    if found is not None:
        return InstallResult("postgresql", str(found), "already installed", 0.0)
    # A path, not a name: which() checks it as is, so nothing on PATH can stand in for it.
    result = install_packages(str(_DEBIAN_ROOT / "15" / "bin" / "postgres"), APT_PACKAGES)
    found = postgres_bin_dir()
    if found is None:
        raise RuntimeError(f"no {_DEBIAN_ROOT}/*/bin/postgres after installing {APT_PACKAGES}")
    return InstallResult("postgresql", str(found), result.action, time.monotonic() - started)


@dataclass(frozen=True)
class _Account:
    uid: int
    gid: int
    name: str


def _server_account() -> _Account:
    if os.geteuid() != 0:
        return _Account(os.geteuid(), os.getegid(), pwd.getpwuid(os.geteuid()).pw_name)
    try:
        entry = pwd.getpwnam(SUPERUSER)
    except KeyError:
        raise RuntimeError(
            "PostgreSQL refuses to run as root and there is no 'postgres' user "
            f"(the Debian package {APT_PACKAGES[0]} creates it)"
        ) from None
    return _Account(entry.pw_uid, entry.pw_gid, entry.pw_name)


class PostgresCluster:
    """One cluster in ``workdir`` (data, socket, log), created fresh by every ``start``.

    ``id_index=False`` leaves out the ``_id`` GIN trigger and ``force_custom_plan``: plain
    FerretDB on PostgreSQL, for the store bench's comparison.
    """

    def __init__(self, workdir: Path, *, id_index: bool = True) -> None:
        self.workdir = workdir
        self.id_index = id_index
        self.data_dir = workdir / "data"
        self.socket_dir = workdir / "socket"
        self.log_file = workdir / "postgres.log"
        self.port = 0
        self._bin: Path | None = None
        self._proc: ManagedProcess | None = None

    @property
    def ferretdb_url(self) -> str:
        """The URL FerretDB's ``--postgresql-url`` takes (trust authentication, loopback)."""
        return f"postgres://{SUPERUSER}@127.0.0.1:{self.port}/{DATABASE}"

    def start(self, timeout: float = 30.0) -> str:
        """initdb, start, create the database (and trigger); return ``ferretdb_url``."""
        install_postgres()
        self._bin = postgres_bin_dir()
        for attempt in (1, 2):  # a picked port can be grabbed before the server binds it
            try:
                self._start_once(timeout)
                return self.ferretdb_url
            except ServerFailedError as exc:
                self.stop()
                if attempt == 2 or "address already in use" not in str(exc).lower():
                    raise
        raise AssertionError("unreachable")

    def _start_once(self, timeout: float) -> None:
        assert self._bin is not None
        account = _server_account()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o755)
        _check_traversable(self.workdir, account)
        shutil.rmtree(self.data_dir, ignore_errors=True)
        shutil.rmtree(self.socket_dir, ignore_errors=True)
        for path, mode in ((self.data_dir, 0o700), (self.socket_dir, 0o755)):
            path.mkdir()
            path.chmod(mode)
            os.chown(path, account.uid, account.gid)
        initdb = subprocess.run(
            [
                *_as(account), str(self._bin / "initdb"), "-D", str(self.data_dir),
                "--username", SUPERUSER, "--auth=trust", "--encoding=UTF8", "--no-locale",
                "--no-sync", "--no-instructions",
            ],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if initdb.returncode != 0:
            raise ServerFailedError(f"initdb failed:\n{initdb.stdout}{initdb.stderr}"[-3000:])
        self.port = free_port()
        settings = {**SETTINGS, **(ID_INDEX_SETTINGS if self.id_index else {})}
        settings["listen_addresses"] = "'127.0.0.1'"
        settings["port"] = str(self.port)
        socket_dir = str(self.socket_dir)
        settings["unix_socket_directories"] = (
            f"'{socket_dir}'" if len(socket_dir) <= _MAX_SOCKET_DIR else "''"
        )
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\n# localinfra (deploy/local/src/localinfra/postgres.py)\n")
            conf.writelines(f"{name} = {value}\n" for name, value in settings.items())
        self._proc = ManagedProcess(
            "postgres",
            [*_as(account), str(self._bin / "postgres"), "-D", str(self.data_dir)],
            self.log_file,
            cwd=self.workdir,
        )
        self._proc.start()
        wait_until_ready(self._proc, self._accepts_connections, timeout, "startup", 0.02)
        self.psql(f"CREATE DATABASE {DATABASE}", database="postgres")
        if self.id_index:
            self.psql(ID_INDEX_TRIGGER_SQL)

    def _accepts_connections(self) -> bool:
        # The postmaster writes "ready" as the 8th line of postmaster.pid once it accepts.
        lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        return len(lines) >= 8 and lines[7].strip() == "ready"

    def psql(
        self, sql: str, database: str = DATABASE, variables: Mapping[str, str] | None = None
    ) -> str:
        """Run SQL with psql as the superuser; return its unaligned, tuples-only output."""
        return run_psql(self.port, sql, database, variables, self._bin)

    def stop(self) -> None:
        """Fast shutdown: sessions still connected are ended, not waited for. Idempotent.

        Backends run in sessions of their own (PostgreSQL calls setsid), out of reach of the
        group signal ``ManagedProcess.stop`` sends, and the SIGTERM it sends asks for a smart
        shutdown, which waits for every client to leave; SIGINT first asks for a fast one.
        """
        proc = self._proc
        if proc is None:
            return
        if proc.is_alive() and proc.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGINT)
        proc.stop(timeout=10.0)


def run_psql(
    port: int,
    sql: str,
    database: str = DATABASE,
    variables: Mapping[str, str] | None = None,
    bin_dir: Path | None = None,
) -> str:
    """Run SQL (one or more statements, from stdin) against 127.0.0.1:``port``.

    ``variables`` are psql variables: ``:'name'`` in the SQL is the value as a literal,
    ``:"name"`` as an identifier, so values need no quoting of ours.
    """
    tools = bin_dir or postgres_bin_dir()
    if tools is None:
        raise RuntimeError("PostgreSQL is not installed (python -m localinfra install)")
    assigned = [f"--set={name}={value}" for name, value in (variables or {}).items()]
    result = subprocess.run(
        [
            str(tools / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", *assigned,
            "-h", "127.0.0.1", "-p", str(port), "-U", SUPERUSER, "-d", database,
        ],
        input=sql, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"psql failed: {result.stderr.strip()}\nSQL: {sql[:500]}")
    return result.stdout


def running_port(cluster_dir: Path) -> int:
    """The port of the cluster running in ``cluster_dir`` (a ``PostgresCluster.workdir``)."""
    lines = (cluster_dir / "data" / "postmaster.pid").read_text().splitlines()
    if len(lines) < 4 or not re.fullmatch(r"\d+", lines[3].strip()):
        raise RuntimeError(f"no running PostgreSQL in {cluster_dir}")
    return int(lines[3])


def _as(account: _Account) -> list[str]:
    """Prefix that runs a command as ``account`` (exec, no extra process: signals reach it)."""
    if account.uid == os.geteuid():
        return []
    return [
        "setpriv", f"--reuid={account.uid}", f"--regid={account.gid}", "--init-groups",
        "--reset-env", "--",
    ]  # fmt: skip


def _check_traversable(workdir: Path, account: _Account) -> None:
    """Fail clearly when the server's user cannot reach ``workdir`` (e.g. a 0700 temp dir)."""
    if account.uid == os.geteuid():
        return
    for parent in workdir.resolve().parents:
        mode = parent.stat().st_mode
        if parent.stat().st_uid != account.uid and not mode & stat.S_IXOTH:
            raise RuntimeError(
                f"{parent} is not traversable by user {account.name!r} (mode "
                f"{stat.filemode(mode)}): PostgreSQL runs as that user; chmod o+x it"
            )
