"""Reading a record the way the contract asks every consumer to (shared/contract/README.md,
"Compatibility").

A record is one of three things to a consumer:
- an event of a type it handles, at a schema version it knows: handle it;
- an event of a type it does not handle (perhaps one added after it was deployed): skip it,
  and commit past it, because new event types are an additive change on any topic;
- unreadable (not JSON, no envelope, or a type it handles at a schema version or in a shape
  it does not know): the producer broke the contract, so it goes to the dead letters.
"""

import json
from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import ValidationError

from mailbox_link_contract.events import Envelope


@dataclass(frozen=True)
class NotHandled:
    """An event of a type this consumer does not handle: skip it."""

    event_type: str


@dataclass(frozen=True)
class Unreadable:
    """A record this consumer cannot read at all; the reason names no field's value."""

    reason: str


def read_event(
    raw: bytes | str, models: Mapping[str, type[Envelope]]
) -> Envelope | NotHandled | Unreadable:
    """Reads one record's value as one of `models` (event type -> model)."""
    try:
        document = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return Unreadable("undecodable: not JSON")
    return read_document(document, models)


def read_document(
    document: object, models: Mapping[str, type[Envelope]]
) -> Envelope | NotHandled | Unreadable:
    """Reads an already parsed JSON document as one of `models`."""
    if not isinstance(document, dict) or not isinstance(document.get("type"), str):
        return Unreadable("undecodable: no envelope (a JSON object with a string `type`)")
    model = models.get(document["type"])
    if model is None:
        return NotHandled(document["type"])
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        return Unreadable(f"undecodable: {validation_summary(exc)}")


def validation_summary(exc: ValidationError) -> str:
    """Names the fields that failed, without their input: a record may carry sealed secrets,
    and reasons end up in logs and headers."""
    return "; ".join(
        f"{'.'.join(str(p) for p in error['loc']) or 'body'}: {error['msg']}"
        for error in exc.errors(include_input=False)[:3]
    )
