"""A MongoDB-protocol server: ``$MONGODB_URI``, else a local ``mongod``, else FerretDB.

FerretDB v1 speaks the MongoDB wire protocol over PostgreSQL (the default here: a throwaway
cluster from ``localinfra.postgres``, docs/adr/0012) or over SQLite files
(``MBL_LOCAL_STORE=ferretdb-sqlite``), so tests need neither Docker nor a MongoDB install. It
supports unique indexes but not multi-document transactions or change streams: code is tested
against it but designed for real MongoDB.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

from pymongo import MongoClient

from localinfra.cache import InstallResult, cache_dir
from localinfra.go_build import cached_go_build, download_module, run
from localinfra.ports import free_port, port_is_open
from localinfra.postgres import PostgresCluster
from localinfra.procs import ManagedProcess, ServerFailedError, wait_until_ready

FERRETDB_VERSION = "v1.24.2"
_MODULE = "github.com/FerretDB/FerretDB"
_MARKER = ".complete"


def ferretdb_binary() -> Path:
    """Where the built FerretDB binary lives in the cache."""
    return cache_dir() / f"ferretdb-{FERRETDB_VERSION}" / "bin" / "ferretdb"


def install_ferretdb() -> InstallResult:
    """Build FerretDB once into the cache; later calls are no-ops.

    A plain ``go install .../cmd/ferretdb@v1.24.2`` builds a binary that panics at start:
    the module zip lacks the generated ``build/version/version.txt``. So we copy the module
    source out of Go's module cache, write that file, and ``go build`` from the copy.
    """
    return cached_go_build(
        "ferretdb",
        _ferretdb_home(),
        lambda: (_ferretdb_home() / _MARKER).exists() and ferretdb_binary().exists(),
        _build_ferretdb,
        "building FerretDB needs Go >= 1.24, or set MONGODB_URI / put mongod on PATH",
    )


def _ferretdb_home() -> Path:
    return ferretdb_binary().parent.parent


def _build_ferretdb(go: str) -> str:
    binary = ferretdb_binary()
    home = _ferretdb_home()
    source = Path(download_module(go, f"{_MODULE}@{FERRETDB_VERSION}")["Dir"])
    work = home / "src"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(source, work)
    _make_writable(work)  # the module cache is read-only
    (work / "build" / "version" / "version.txt").write_text(FERRETDB_VERSION + "\n")
    binary.parent.mkdir(parents=True, exist_ok=True)
    run(
        [go, "build", "-trimpath", "-buildvcs=false", "-o", str(binary), "./cmd/ferretdb"],
        cwd=work,
    )
    check = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    if check.returncode != 0:
        raise RuntimeError(f"built FerretDB does not run:\n{check.stdout}{check.stderr}")
    shutil.rmtree(work, ignore_errors=True)
    (home / _MARKER).write_text(FERRETDB_VERSION + "\n")
    return "installed"


def _make_writable(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            path.chmod(path.stat().st_mode | stat.S_IWUSR)


FERRETDB_POSTGRESQL = "ferretdb-postgresql"
FERRETDB_SQLITE = "ferretdb-sqlite"
FERRETDB_BACKENDS = (FERRETDB_POSTGRESQL, FERRETDB_SQLITE)
LOCAL_STORE_ENV = "MBL_LOCAL_STORE"


def mongo_backend() -> str:
    """Which server ``MongoServer`` will use.

    "external" (``$MONGODB_URI``), else "mongod" (on PATH), else FerretDB on the backend
    ``$MBL_LOCAL_STORE`` names: "ferretdb-postgresql" (the default) or "ferretdb-sqlite".
    """
    if os.environ.get("MONGODB_URI"):
        return "external"
    if shutil.which("mongod"):
        return "mongod"
    store = os.environ.get(LOCAL_STORE_ENV) or FERRETDB_POSTGRESQL
    if store not in FERRETDB_BACKENDS:
        raise ValueError(f"{LOCAL_STORE_ENV}={store!r}: use one of {', '.join(FERRETDB_BACKENDS)}")
    return store


class MongoServer:
    """Starts (or adopts, with ``$MONGODB_URI``) a MongoDB-protocol server on 127.0.0.1."""

    def __init__(
        self, workdir: Path, backend: str | None = None, *, postgres_id_index: bool = True
    ) -> None:
        """``backend`` overrides ``mongo_backend()`` (the store bench runs each in turn);
        ``postgres_id_index=False`` leaves out the cluster's ``_id`` GIN index and its plan
        setting (``PostgresCluster``), for comparison only."""
        self.workdir = workdir
        self.backend = backend or mongo_backend()
        self.uri = os.environ.get("MONGODB_URI", "") if self.backend == "external" else ""
        self.postgres: PostgresCluster | None = None
        if self.backend == FERRETDB_POSTGRESQL:
            self.postgres = PostgresCluster(workdir / "postgres", id_index=postgres_id_index)
        self._proc: ManagedProcess | None = None
        self._port = 0

    def start(self, timeout: float = 30.0) -> str:
        """Start the server and wait until it answers ``ping``; return its URI."""
        if self.backend == "external":
            _wait_for_ping(self.uri, timeout)
            return self.uri
        if self.backend in FERRETDB_BACKENDS:
            install_ferretdb()
        try:
            if self.postgres is not None:
                self.postgres.start(timeout)
            for attempt in (1, 2):  # a picked port can be grabbed before the server binds it
                try:
                    return self._start_once(timeout)
                except ServerFailedError as exc:
                    self._stop_server()
                    if attempt == 2 or "address already in use" not in str(exc).lower():
                        raise
        except BaseException:
            self.stop()
            raise
        raise AssertionError("unreachable")

    def pause(self) -> None:
        """Stops the server (an outage), keeping its data and its port for `resume`; the
        PostgreSQL cluster behind FerretDB keeps running: FerretDB away is the outage."""
        if self.backend == "external":
            raise RuntimeError("an external MongoDB ($MONGODB_URI) is not ours to stop")
        self._stop_server()

    def resume(self, timeout: float = 30.0) -> str:
        """Starts the server again on its data and its port (clients reconnect by
        themselves) and waits until it answers ``ping``."""
        if self.backend == "external" or not self._port:
            raise RuntimeError("resume needs a server this object started and paused")
        if self._proc is not None:
            return self.uri
        return self._start_once(timeout, port=self._port, keep_data=True)

    def _start_once(self, timeout: float, port: int = 0, keep_data: bool = False) -> str:
        port = port or free_port()
        self._port = port
        data = self.workdir / "data"
        if not keep_data:
            shutil.rmtree(data, ignore_errors=True)
        data.mkdir(parents=True, exist_ok=True)
        if self.backend == "mongod":
            argv = [
                "mongod", "--dbpath", str(data), "--port", str(port), "--bind_ip", "127.0.0.1",
                "--quiet", "--setParameter", "diagnosticDataCollectionEnabled=false",
            ]  # fmt: skip
        else:
            if self.postgres is not None:
                handler = ["--handler=postgresql", f"--postgresql-url={self.postgres.ferretdb_url}"]
            else:
                handler = ["--handler=sqlite", f"--sqlite-url=file:{data}/"]
            argv = [
                str(ferretdb_binary()),
                *handler,
                f"--listen-addr=127.0.0.1:{port}",
                f"--state-dir={self.workdir}",
                # Its default debug address 127.0.0.1:8088 would clash between instances.
                f"--debug-addr=127.0.0.1:{free_port()}",
                "--telemetry=disable",
                "--log-level=info",
            ]
        self._proc = ManagedProcess(
            self.backend, argv, self.workdir / f"{self.backend}.log", cwd=self.workdir
        )
        self._proc.start()
        uri = f"mongodb://127.0.0.1:{port}/"
        # Poll the port cheaply first: a ping before the listener exists waits out pymongo's
        # 500 ms server-selection retry.
        wait_until_ready(
            self._proc, lambda: port_is_open("127.0.0.1", port), timeout, "listener", 0.02
        )
        wait_until_ready(self._proc, lambda: ping(uri), timeout, "ping", interval=0.05)
        self.uri = uri
        return uri

    def _stop_server(self) -> None:
        if self._proc is not None:
            self._proc.stop(timeout=10.0)
            self._proc = None

    def stop(self) -> None:
        """Stop what we started (never an external server): FerretDB, then PostgreSQL.
        Idempotent."""
        self._stop_server()
        if self.postgres is not None:
            self.postgres.stop()


def ping(uri: str, timeout_ms: int = 500) -> bool:
    """Run the ``ping`` command once (raises when the server does not answer in time)."""
    # No directConnection: an external URI may name a replica set.
    client: MongoClient[dict[str, object]] = MongoClient(
        uri, serverSelectionTimeoutMS=timeout_ms, connectTimeoutMS=timeout_ms
    )
    try:
        client.admin.command("ping")
    finally:
        client.close()
    return True


def _wait_for_ping(uri: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            ping(uri, timeout_ms=2000)
            return
        except Exception as exc:
            if time.monotonic() >= deadline:
                raise ServerFailedError(f"MONGODB_URI {uri!r} does not answer ping: {exc}") from exc
            time.sleep(0.2)
