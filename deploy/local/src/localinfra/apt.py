"""Installs server software from Debian's packages when a binary is missing."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Sequence

from localinfra.cache import InstallResult, install_lock


def find_binary(name: str) -> str | None:
    """Path of `name`, also looked up in sbin dirs, which non-root PATHs often lack."""
    found = shutil.which(name)
    if found:
        return found
    for candidate in (f"/usr/sbin/{name}", f"/usr/local/sbin/{name}"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def install_packages(binary: str, packages: Sequence[str]) -> InstallResult:
    """Installs the Debian packages that provide `binary` unless it is there (needs root)."""
    started = time.monotonic()
    found = find_binary(binary)
    if found:
        return InstallResult(binary, found, "already installed", 0.0)
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise RuntimeError(
            f"{binary} is missing; as root on Debian/Ubuntu run: apt-get install -y "
            + " ".join(packages)
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    with install_lock("apt"):  # apt allows one install at a time
        if find_binary(binary):
            return InstallResult(binary, str(find_binary(binary)), "installed meanwhile", 0.0)
        for argv in (["apt-get", "update"], ["apt-get", "install", "-y", *packages]):
            result = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
            if result.returncode != 0:
                raise RuntimeError(f"{' '.join(argv)} failed:\n{result.stderr[-3000:]}")
    found = find_binary(binary)
    if found is None:
        raise RuntimeError(f"{binary} still missing after apt-get install")
    return InstallResult(binary, found, "installed", time.monotonic() - started)
