"""The contract's data files: an example per event type and version, and the JSON Schemas
generated from the models for consumers in other languages (`python -m
mailbox_link_contract.json_schemas`)."""

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
EXAMPLES_DIR = PACKAGE_DIR / "examples"
SCHEMAS_DIR = PACKAGE_DIR / "schemas"


def example_paths() -> list[Path]:
    """Returns every example file, `examples/<Type>/v<N>[-variant].json`, sorted."""
    return sorted(EXAMPLES_DIR.glob("*/v*.json"))
