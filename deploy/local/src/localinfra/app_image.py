"""Builds the services' image (deploy/container/Containerfile) on the debootstrap base.

One image runs all four services; the command picks one. Locally it is built from the Debian
base localinfra.containers makes (no registry here); operators' CI builds the same Containerfile
from the public python:3.11-slim-bookworm. The tag is the one compose and the tests use.
"""

from __future__ import annotations

import json
import subprocess
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

from localinfra.containers import BASE_IMAGE, build_image, ensure_base_image, podman

APP_IMAGE = "localhost/mailbox-link:dev"
REPO_ROOT = Path(__file__).resolve().parents[4]
CONTAINERFILE = REPO_ROOT / "deploy" / "container" / "Containerfile"


@dataclass(frozen=True)
class AppImageBuild:
    """What a build took: the base's preparation and the image build, and the image's size."""

    tag: str
    base_action: str
    base_seconds: float
    build_seconds: float
    size_bytes: int


def contract_version() -> str:
    """The event contract's version, the image's version label."""
    pyproject = REPO_ROOT / "shared" / "contract" / "pyproject.toml"
    return str(tomllib.loads(pyproject.read_text())["project"]["version"])


def _revision() -> str:
    result = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout.strip() if result.returncode == 0 else ""


def image_size(tag: str) -> int:
    """The image's size in bytes as `podman image inspect` reports it."""
    inspected = json.loads(podman("image", "inspect", tag).stdout)
    return int(inspected[0]["Size"])


def build_app_image(tag: str = APP_IMAGE, base_image: str = BASE_IMAGE) -> AppImageBuild:
    """Builds `tag` from the Containerfile on `base_image` (the debootstrap base by default,
    made first if missing); unchanged layers come from podman's cache."""
    base = ensure_base_image() if base_image == BASE_IMAGE else None
    started = time.monotonic()
    build_image(
        tag,
        CONTAINERFILE,
        REPO_ROOT,
        build_args={
            "BASE_IMAGE": base_image,
            "VERSION": contract_version(),
            "REVISION": _revision(),
        },
    )
    return AppImageBuild(
        tag=tag,
        base_action=base.action if base else "given",
        base_seconds=base.seconds if base else 0.0,
        build_seconds=time.monotonic() - started,
        size_bytes=image_size(tag),
    )


def main() -> None:
    """`python -m localinfra.app_image`: builds the image and prints what it took."""
    built = build_app_image()
    print(
        f"{built.tag}: built in {built.build_seconds:.1f} s "
        f"(base {built.base_action}, {built.base_seconds:.1f} s), "
        f"{built.size_bytes / 1e6:.0f} MB"
    )


if __name__ == "__main__":
    main()
