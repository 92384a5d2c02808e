"""Cache directory for downloaded and built server software, shared across runs."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


def cache_dir() -> Path:
    """Return (and create) the cache root: ``$MBL_CACHE_DIR`` or ``~/.cache/mailbox-link``."""
    override = os.environ.get("MBL_CACHE_DIR")
    root = Path(override) if override else Path.home() / ".cache" / "mailbox-link"
    root.mkdir(parents=True, exist_ok=True)
    return root


@contextlib.contextmanager
def install_lock(name: str) -> Iterator[None]:
    """Serialise installs of one component across processes (parallel test runs, CLI)."""
    lock_path = cache_dir() / f".{name}.lock"
    with lock_path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass(frozen=True)
class InstallResult:
    """What an install step found or did, for the CLI to report."""

    component: str
    location: str
    action: str  # "already installed", "installed", "using ...", ...
    seconds: float

    def describe(self) -> str:
        """One human-readable line."""
        return f"{self.component}: {self.action} ({self.location}) in {self.seconds:.1f} s"
