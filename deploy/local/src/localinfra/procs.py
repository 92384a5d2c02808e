"""Server child processes: own session, output to a log file, stoppable as a whole group."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path


class ServerFailedError(RuntimeError):
    """A server did not come up; the message carries the tail of its log."""


class ManagedProcess:
    """One server process started in a new session so its whole group can be signalled.

    A new session (``start_new_session=True``) keeps Ctrl-C in the terminal from hitting the
    servers before we stop them in order, and lets ``stop`` reach grandchildren (Dovecot's
    workers, the JVM's helpers) through the process group.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_file: Path,
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_file = log_file
        self.cwd = cwd
        self.env = dict(env) if env is not None else None
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        """PID of the session leader, or None before start."""
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        """Launch the process; output (stdout and stderr) goes to ``log_file`` only."""
        _live.add(self)
        with self._lock:
            if self._proc is not None:
                raise RuntimeError(f"{self.name} already started")
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            with self.log_file.open("ab") as log:
                self._proc = subprocess.Popen(
                    self.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.cwd,
                    env=self.env,
                    start_new_session=True,
                )

    def is_alive(self) -> bool:
        """True while the session leader runs."""
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        """Last lines of the log, for error messages."""
        return log_tail(self.log_file, lines)

    def fail(self, problem: str) -> ServerFailedError:
        """Build an error naming the server, its log file and the log's tail."""
        state = "running" if self.is_alive() else "exited"
        return ServerFailedError(
            f"{self.name}: {problem} (process {state}; log {self.log_file}):\n{self.log_tail()}"
        )

    def terminate(self) -> None:
        """Send SIGTERM to the group without waiting, so many servers can stop in parallel."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            _signal_group(proc.pid, signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL the whole group at once, as a crash would, and reap it."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        _live.discard(self)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process group, wait up to ``timeout``, then SIGKILL. Idempotent."""
        with self._lock:
            proc = self._proc
            if proc is None:
                return
            pgid = proc.pid  # leader of its own session, so pid == pgid
            if proc.poll() is None:
                _signal_group(pgid, signal.SIGTERM)
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    _signal_group(pgid, signal.SIGKILL)
                    proc.wait(timeout=5)
            # Workers may outlive their leader (e.g. a killed master): sweep the group.
            if _group_exists(pgid):
                time.sleep(0.1)
                _signal_group(pgid, signal.SIGKILL)
        _live.discard(self)


# Every started, not yet stopped process: the SIGTERM hook below must reach them without
# taking any lock (it runs between two bytecodes of whatever the main thread was doing).
_live: weakref.WeakSet[ManagedProcess] = weakref.WeakSet()


def install_sigterm_cleanup() -> None:
    """Make SIGTERM stop our servers before the process dies, if nobody else handles it.

    By default SIGTERM kills Python without running ``atexit``/``finally``, which would
    orphan the servers (they live in their own sessions). Only installed from the main
    thread and only over the default handler, so applications keep their own handling.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return

    def on_sigterm(signum: int, frame: object) -> None:
        for proc in list(_live):
            proc.terminate()
        # Then die of SIGTERM as if we had not been here.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_sigterm)


def log_tail(path: Path, lines: int = 40) -> str:
    """Last ``lines`` lines of a text file, or a note when it does not exist."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def wait_until_ready(
    proc: ManagedProcess,
    check: Callable[[], bool],
    timeout: float,
    what: str,
    interval: float = 0.1,
) -> None:
    """Call ``check`` until it returns True; raise with the log tail on death or timeout."""
    deadline = time.monotonic() + timeout
    last_error = "not ready"
    while True:
        if not proc.is_alive():
            raise proc.fail(f"exited while waiting for {what}")
        try:
            if check():
                return
        except Exception as exc:  # any failure just means "not ready yet"
            last_error = f"{type(exc).__name__}: {exc}"
        if time.monotonic() >= deadline:
            raise proc.fail(f"{what} not ready within {timeout:.0f} s ({last_error})")
        time.sleep(interval)
