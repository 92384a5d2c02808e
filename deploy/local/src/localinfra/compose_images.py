"""Local images that stand in for compose.yaml's public ones on machines without a registry.

deploy/compose/compose.local.yaml runs Kafka and a MongoDB-protocol server from these: Kafka
from the broker jars Maven already put in the cache (localinfra.kafka) plus Debian's JRE, and
FerretDB from its cached Go build (localinfra.mongo), both on the debootstrapped base image.
An image is rebuilt only when its recipe changes: the hash of its Containerfile, its files and
the component's version is kept in a label and compared before building.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from localinfra.cache import InstallResult, cache_dir, install_lock
from localinfra.containers import (
    BASE_IMAGE,
    BASE_RECIPE,
    build_image,
    ensure_base_image,
    image_exists,
    podman,
)
from localinfra.kafka import KAFKA_VERSION, LOG4J_VERSION, install_kafka, kafka_home
from localinfra.mongo import FERRETDB_VERSION, ferretdb_binary, install_ferretdb

RECIPES = Path(__file__).resolve().parents[3] / "compose" / "local-images"
KAFKA_IMAGE = f"localhost/mailbox-link/kafka:{KAFKA_VERSION}"
FERRETDB_IMAGE = f"localhost/mailbox-link/ferretdb:{FERRETDB_VERSION}"
RECIPE_LABEL = "io.mailbox-link.recipe"
KAFKA_FILES = ("Containerfile", "kafka-start.py", "kafka-health.py", "log4j2.properties")
FERRETDB_FILES = ("Containerfile",)


def build_kafka_image() -> InstallResult:
    """Makes KAFKA_IMAGE available: already built from this recipe, or built now."""
    recipe = _recipe("kafka", KAFKA_FILES, f"kafka {KAFKA_VERSION} log4j {LOG4J_VERSION}")
    return _ensure(KAFKA_IMAGE, recipe, install_kafka, _kafka_context)


def build_ferretdb_image() -> InstallResult:
    """Makes FERRETDB_IMAGE available: already built from this recipe, or built now."""
    recipe = _recipe("ferretdb", FERRETDB_FILES, f"ferretdb {FERRETDB_VERSION}")
    return _ensure(FERRETDB_IMAGE, recipe, install_ferretdb, _ferretdb_context)


def image_recipe(tag: str) -> str:
    """The recipe label of the image `tag`, "" when it has none or is not there."""
    if not image_exists(tag):
        return ""
    found = podman("image", "inspect", "--format", f'{{{{index .Labels "{RECIPE_LABEL}"}}}}', tag)
    return found.stdout.strip().replace("<no value>", "")


def image_size_mb(tag: str) -> float:
    """The image's size in MB (as `podman images` counts it)."""
    size = podman("image", "inspect", "--format", "{{.Size}}", tag).stdout.strip()
    return int(size) / 1e6


def _recipe(name: str, files: tuple[str, ...], versions: str) -> str:
    digest = hashlib.sha256(f"{versions} base r{BASE_RECIPE}\n".encode())
    for file in files:
        digest.update(file.encode() + b"\0" + (RECIPES / name / file).read_bytes())
    return digest.hexdigest()[:16]


def _ensure(
    tag: str,
    recipe: str,
    install: Callable[[], InstallResult],
    context: Callable[[Path], None],
) -> InstallResult:
    started = time.monotonic()
    if image_recipe(tag) == recipe:
        return InstallResult(tag, recipe, "already built", 0.0)
    install()  # the jars or the binary, from the cache or built once
    ensure_base_image()
    with install_lock(f"compose-image-{tag.rsplit('/', 1)[-1]}"):
        if image_recipe(tag) != recipe:  # another process may have built it meanwhile
            with tempfile.TemporaryDirectory(prefix="mbl-image-", dir=cache_dir()) as tmp:
                directory = Path(tmp)
                context(directory)
                build_image(
                    tag,
                    directory / "Containerfile",
                    directory,
                    {"BASE_IMAGE": BASE_IMAGE},
                    extra=("--label", f"{RECIPE_LABEL}={recipe}"),
                )
    return InstallResult(tag, recipe, "built", time.monotonic() - started)


def _kafka_context(directory: Path) -> None:
    for file in KAFKA_FILES:
        shutil.copy2(RECIPES / "kafka" / file, directory / file)
    # Hard links when the cache is on the same file system: 45 jars, no copying.
    shutil.copytree(kafka_home() / "libs", directory / "libs", copy_function=_link_or_copy)


def _ferretdb_context(directory: Path) -> None:
    for file in FERRETDB_FILES:
        shutil.copy2(RECIPES / "ferretdb" / file, directory / file)
    _link_or_copy(str(ferretdb_binary()), str(directory / "ferretdb"))


def _link_or_copy(source: str, target: str) -> str:
    try:
        Path(target).hardlink_to(source)
    except OSError:
        shutil.copy2(source, target)
    return target


def main() -> None:
    """Builds (or finds) both images and says what each took: `python -m
    localinfra.compose_images`."""
    for build in (build_kafka_image, build_ferretdb_image):
        result = build()
        print(f"{result.describe()}, {image_size_mb(result.component):.0f} MB")


if __name__ == "__main__":
    main()
