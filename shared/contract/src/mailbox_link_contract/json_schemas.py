"""Generates one JSON Schema per event type and schema version, `schemas/<Type>/v<N>.json`,
for consumers that do not use the pydantic models. `make contract` writes them; the contract
test and `make lint` fail when a checked-in schema is stale."""

import json
import sys

from mailbox_link_contract.files import SCHEMAS_DIR
from mailbox_link_contract.topics import EVENT_MODELS


def json_schemas() -> dict[str, str]:
    """Returns each schema file's path under SCHEMAS_DIR and its text."""
    documents = {}
    for event_type, model in sorted(EVENT_MODELS.items()):
        version = model.model_fields["schema_version"].default
        schema = model.model_json_schema(mode="validation")
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"mailbox-link/{event_type}/v{version}.json"
        documents[f"{event_type}/v{version}.json"] = json.dumps(schema, indent=2, sort_keys=True)
    return {path: text + "\n" for path, text in documents.items()}


def stale_schemas() -> list[str]:
    """Returns the schema files that are missing, differ or are no longer generated."""
    expected = json_schemas()
    present = {str(p.relative_to(SCHEMAS_DIR)) for p in SCHEMAS_DIR.glob("*/v*.json")}
    stale = [
        path
        for path, text in expected.items()
        if not (SCHEMAS_DIR / path).exists() or (SCHEMAS_DIR / path).read_text() != text
    ]
    return sorted(stale + sorted(present - expected.keys()))


def main() -> None:
    """Writes the schemas, or with --check exits 1 naming the stale ones."""
    if "--check" in sys.argv:
        stale = stale_schemas()
        if stale:
            print("stale JSON Schemas: " + ", ".join(stale), file=sys.stderr)
        sys.exit(1 if stale else 0)
    for path in SCHEMAS_DIR.glob("*/v*.json"):
        path.unlink()
    for name, text in json_schemas().items():
        (SCHEMAS_DIR / name).parent.mkdir(parents=True, exist_ok=True)
        (SCHEMAS_DIR / name).write_text(text)


if __name__ == "__main__":
    main()
