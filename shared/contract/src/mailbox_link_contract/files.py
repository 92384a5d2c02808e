"""The contract's data files: an example per event type and version, and the JSON Schemas
generated from the models for consumers in other languages (`python -m
mailbox_link_contract.json_schemas`)."""

import json
from pathlib import Path
from typing import Any

PACKAGE_DIR = Path(__file__).resolve().parent
EXAMPLES_DIR = PACKAGE_DIR / "examples"
SCHEMAS_DIR = PACKAGE_DIR / "schemas"


def example_paths() -> list[Path]:
    """Returns every example file, `examples/<Type>/v<N>[-variant].json`, sorted."""
    return sorted(EXAMPLES_DIR.glob("*/v*.json"))


def load_example(path: Path) -> dict[str, Any]:
    """Returns one example event as a JSON object."""
    document: dict[str, Any] = json.loads(path.read_text())
    return document
