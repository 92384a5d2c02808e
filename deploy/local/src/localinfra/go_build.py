"""Go builds of the local servers (FerretDB, the OpenTelemetry collector, the Kubernetes control
plane): finding Go, running it, and a build done once per version into the cache.

No release binary can be downloaded here, so each of them is built from its Go module source
into ``cache_dir()``; a later call, in any process, finds it there and builds nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from localinfra.cache import InstallResult, install_lock


def require_go(purpose: str) -> str:
    """The go command on PATH; raises saying what needs it (``purpose``) when there is none."""
    go = shutil.which("go")
    if go is None:
        raise RuntimeError(f"'go' not found: {purpose}. Go: https://go.dev/dl/")
    return go


def run(argv: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    """Runs a build step (go, or a tool go built) and returns its output; raises with the
    tail of what it printed when it fails."""
    result = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} failed:\n{result.stdout[-2000:]}{result.stderr[-3000:]}"
        )
    return result.stdout


def download_module(go: str, module: str) -> dict[str, str]:
    """``go mod download -json module@version``: where its source (Dir) and go.mod (GoMod) are."""
    found: dict[str, str] = json.loads(run([go, "mod", "download", "-json", module]))
    return found


def cached_go_build(
    component: str,
    home: Path,
    built: Callable[[], bool],
    build: Callable[[str], str],
    purpose: str,
) -> InstallResult:
    """Runs ``build(go)`` unless ``built()`` says the cache already holds the result.

    ``home`` is the component's versioned folder in the cache; its name names the lock that
    lets one process at a time build (parallel test runs build once, the others then find
    the result). ``build`` returns what it did, for the CLI."""
    started = time.monotonic()
    with install_lock(home.name):
        if built():
            return InstallResult(
                component, str(home), "already installed", time.monotonic() - started
            )
        action = build(require_go(purpose))
    return InstallResult(component, str(home), action, time.monotonic() - started)
