"""Rootful podman on machines without a Docker engine or a registry: install, configure, base image.

Two settings every ``podman run`` needs here (../shared/notes/deploy-facts.md): runc instead of
crun (crun rejects the hybrid cgroup layout) and ulimits podman may set (the sandbox cannot
raise RLIMIT_NOFILE). They live in a containers.conf of ours that ``CONTAINERS_CONF`` points at,
so the machine's own configuration is left alone.

The base image is Debian bookworm made by debootstrap with Python 3.11, the stand-in for the
public ``python:3.11-slim-bookworm`` operators build on; its root tarball is cached, so a new
podman storage pays an import (seconds), not a debootstrap (minutes).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from localinfra.apt import find_binary, install_packages
from localinfra.cache import InstallResult, cache_dir, install_lock

PODMAN_PACKAGES = (
    "podman",
    "runc",
    "debootstrap",
    "containernetworking-plugins",
    "catatonit",
    "uidmap",
)
BASE_IMAGE = "localhost/mailbox-link/debian-base:bookworm"
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
# What the base adds to minbase: the interpreter the services run on, venv/ensurepip to bootstrap
# uv in a build stage, and the CA store for outgoing TLS (mail servers, OAuth providers).
# debootstrap does not resolve virtual packages: python3.11-venv needs python3.11-distutils,
# which python3-distutils provides.
BASE_PACKAGES = (
    "python3.11",
    "python3.11-venv",
    "python3-distutils",
    "python3-lib2to3",
    "ca-certificates",
    "tzdata",
)
# Bump when BASE_PACKAGES or the recipe change: the cached tarball is keyed by it.
BASE_RECIPE = "1"
# The CA bundle of this machine, which outgoing HTTPS (PyPI) needs inside builds.
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")

_CONTAINERS_CONF = """\
# Written by localinfra.containers; podman reads it through CONTAINERS_CONF.
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
"""


def install_podman() -> InstallResult:
    """Installs podman, runc and debootstrap from Debian's packages unless they are there."""
    result = install_packages("podman", PODMAN_PACKAGES)
    if find_binary("runc") is None or find_binary("debootstrap") is None:
        return install_packages("runc", PODMAN_PACKAGES)
    return result


def containers_conf() -> Path:
    """Our containers.conf (runc, settable ulimits), written once into the cache."""
    path = cache_dir() / "podman" / "containers.conf"
    if not path.exists() or path.read_text() != _CONTAINERS_CONF:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(_CONTAINERS_CONF)
    return path


def podman_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for podman (and podman-compose) commands: our containers.conf."""
    return {**os.environ, "CONTAINERS_CONF": str(containers_conf()), **(extra or {})}


def podman(
    *args: str, timeout: float = 600, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Runs ``podman ARGS`` with our configuration; raises with its stderr when it fails."""
    result = subprocess.run(
        ["podman", *args],
        env=podman_env(),
        capture_output=True,
        timeout=timeout,
        check=False,
        text=True,
    )
    if check and result.returncode != 0:
        raise RuntimeError(
            f"podman {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}"
        )
    return result


def image_exists(name: str) -> bool:
    """True when podman's storage holds the image `name`."""
    return podman("image", "exists", name, check=False).returncode == 0


def ensure_base_image() -> InstallResult:
    """Makes BASE_IMAGE available: already there, imported from the cache, or debootstrapped."""
    started = time.monotonic()
    install_podman()
    if image_exists(BASE_IMAGE):
        return InstallResult("base image", BASE_IMAGE, "already there", 0.0)
    tarball = cache_dir() / "images" / f"debian-{DEBIAN_SUITE}-python3.11-r{BASE_RECIPE}.tar"
    with install_lock("base-image"):
        action = "imported from cache"
        if not tarball.exists():
            _debootstrap_tarball(tarball)
            action = "debootstrapped"
        if not image_exists(BASE_IMAGE):
            _import(tarball)
    return InstallResult("base image", BASE_IMAGE, action, time.monotonic() - started)


def build_image(
    tag: str,
    containerfile: Path,
    context: Path,
    build_args: Mapping[str, str] | None = None,
    extra: Sequence[str] = (),
    timeout: float = 1200,
) -> float:
    """Builds `tag` with podman (host network, this machine's CA mounted); returns seconds."""
    started = time.monotonic()
    args = ["build", "--network", "host", "-t", tag, "-f", str(containerfile)]
    if HOST_CA_BUNDLE.exists():
        args += ["-v", f"{HOST_CA_BUNDLE}:/run/build-ca.crt:ro"]
    for name, value in (build_args or {}).items():
        args += ["--build-arg", f"{name}={value}"]
    podman(*args, *extra, str(context), timeout=timeout)
    return time.monotonic() - started


def _debootstrap_tarball(tarball: Path) -> None:
    debootstrap = find_binary("debootstrap")
    if debootstrap is None:
        raise RuntimeError("debootstrap is missing: apt-get install -y debootstrap")
    tarball.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mbl-rootfs-", dir=tarball.parent) as tmp:
        root = Path(tmp) / "rootfs"
        command = [
            debootstrap, "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
            DEBIAN_SUITE, str(root), DEBIAN_MIRROR,
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(
                f"debootstrap failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}"
            )
        _slim(root)
        partial = tarball.with_suffix(".partial")
        subprocess.run(["tar", "-C", str(root), "-cf", str(partial), "."], check=True)
        partial.replace(tarball)


def _slim(root: Path) -> None:
    """Drops what an image never needs (apt lists, docs, caches): smaller and nothing stale."""
    for relative in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc",
                     "usr/share/man", "usr/share/info"):  # fmt: skip
        target = root / relative
        if target.is_dir():
            shutil.rmtree(target)
            target.mkdir(parents=True)
    (root / "var/lib/apt/lists/partial").mkdir(parents=True, exist_ok=True)


def _import(tarball: Path) -> None:
    with tarball.open("rb") as source:
        result = subprocess.run(
            ["podman", "import", "--change", 'CMD ["/bin/bash"]', "-", BASE_IMAGE],
            stdin=source,
            env=podman_env(),
            capture_output=True,
            text=True,
            check=False,
        )
    if result.returncode != 0:
        raise RuntimeError(f"podman import failed:\n{result.stderr[-3000:]}")
