"""An SMTP sink (aiosmtpd) that accepts and discards mail: Dovecot submission's relay."""

from __future__ import annotations

import sys
from pathlib import Path

from localinfra.ports import free_port, wait_for_banner
from localinfra.procs import ManagedProcess, ServerFailedError


class SmtpSink:
    """``python -m aiosmtpd`` with the Sink handler on 127.0.0.1, as a child process.

    A separate process (not a thread in ours) so it survives event-loop games in the caller
    and can be stopped like every other server.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = 0
        self._proc: ManagedProcess | None = None

    def launch(self) -> None:
        """Start the process without waiting for it."""
        self.port = free_port()
        self._proc = ManagedProcess(
            "smtp-sink",
            [
                sys.executable, "-m", "aiosmtpd",
                "-n",  # as root it would otherwise setuid to nobody
                "-l", f"127.0.0.1:{self.port}",
                "-c", "aiosmtpd.handlers.Sink",
            ],
            self.workdir / "smtp-sink.log",
        )  # fmt: skip
        self._proc.start()

    def wait_ready(self, timeout: float = 15.0) -> None:
        """Wait for the ``220`` greeting."""
        proc = self._proc
        if proc is None:
            raise RuntimeError("sink not launched")
        try:
            wait_for_banner("127.0.0.1", self.port, b"220", timeout, is_alive=proc.is_alive)
        except (TimeoutError, RuntimeError) as exc:
            raise proc.fail(str(exc)) from exc

    def start(self, timeout: float = 15.0) -> None:
        """Launch and wait; relaunch once on another port if the first one was taken."""
        self.launch()
        try:
            self.wait_ready(timeout)
        except ServerFailedError:
            self.stop()
            self.launch()
            self.wait_ready(timeout)

    def terminate(self) -> None:
        """Send SIGTERM without waiting (``stop`` then waits)."""
        if self._proc is not None:
            self._proc.terminate()

    def stop(self) -> None:
        """Stop the sink. Idempotent."""
        if self._proc is not None:
            self._proc.stop(timeout=5.0)
