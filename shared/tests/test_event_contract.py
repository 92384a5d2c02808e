"""Every event type has an example per schema version, and the examples still parse."""

import json
from pathlib import Path

import pytest
from pydantic import BaseModel, TypeAdapter, ValidationError

from mailbox_link_shared import events
from mailbox_link_shared.asyncapi import DOCUMENT_PATH, asyncapi_yaml
from mailbox_link_shared.topics import Topics

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
EVENT_TYPES: dict[str, type[BaseModel]] = {
    "LinkRequested": events.LinkRequested,
    "MailboxVerified": events.MailboxVerified,
    "VerificationFailed": events.VerificationFailed,
    "LinkRejected": events.LinkRejected,
    "MailboxLinked": events.MailboxLinked,
    "MailboxUnlinked": events.MailboxUnlinked,
    "LinkReserved": events.LinkReserved,
    "UserPlanChanged": events.UserPlanChanged,
    "AuthorizationRequired": events.AuthorizationRequired,
    "MailboxReconnectRequired": events.MailboxReconnectRequired,
}


@pytest.mark.parametrize("name", sorted(EVENT_TYPES))
def test_every_example_parses_and_round_trips(name: str) -> None:
    versions = sorted((EXAMPLES / name).glob("v*.json"))
    assert versions, f"{name} has no example"
    for path in versions:
        raw = json.loads(path.read_text())
        event = EVENT_TYPES[name].model_validate(raw)
        assert event.model_dump(mode="json") == raw
        assert Topics.for_namespace("mailbox-link").for_event(raw["type"])


def test_consumers_ignore_fields_added_later() -> None:
    raw = json.loads((EXAMPLES / "MailboxLinked" / "v1.json").read_text())
    raw["data"]["added_in_a_later_minor_change"] = True
    assert events.MailboxLinked.model_validate(raw).data.address == "alice@example.org"


def test_events_are_keyed_by_their_mailbox() -> None:
    raw = json.loads((EXAMPLES / "LinkRequested" / "v1.json").read_text())
    assert events.LinkRequested.model_validate(raw).partition_key() == b"alice@example.org"


def test_plan_changes_are_keyed_by_their_user() -> None:
    raw = json.loads((EXAMPLES / "UserPlanChanged" / "v1.json").read_text())
    assert events.UserPlanChanged.model_validate(raw).partition_key() == b"acme/u1"


@pytest.mark.parametrize("name", sorted(EVENT_TYPES))
def test_v1_models_refuse_an_event_of_schema_version_2(name: str) -> None:
    raw = json.loads((EXAMPLES / name / "v1.json").read_text())
    raw["schema_version"] = 2
    with pytest.raises(ValidationError, match="schema_version"):
        EVENT_TYPES[name].model_validate(raw)


def test_consumers_unions_refuse_an_event_of_schema_version_2() -> None:
    raw = json.loads((EXAMPLES / "MailboxLinked" / "v1.json").read_text())
    raw["schema_version"] = 2
    adapter: TypeAdapter[events.MailboxEvent] = TypeAdapter(events.MailboxEvent)
    with pytest.raises(ValidationError, match="schema_version"):
        adapter.validate_json(json.dumps(raw))


def test_checked_in_asyncapi_document_is_current() -> None:
    assert DOCUMENT_PATH.read_text() == asyncapi_yaml(), "run `make asyncapi` and commit the result"


def test_a_password_link_request_must_carry_credentials() -> None:
    raw = json.loads((EXAMPLES / "LinkRequested" / "v1.json").read_text())
    raw["data"]["credentials"] = None
    with pytest.raises(ValidationError, match="credentials"):
        events.LinkRequested.model_validate(raw)


def test_an_oauth_link_request_carries_no_credentials_but_its_verification_does() -> None:
    requested = json.loads((EXAMPLES / "LinkRequested" / "v1-oauth.json").read_text())
    assert events.LinkRequested.model_validate(requested).data.credentials is None
    verified = json.loads((EXAMPLES / "MailboxVerified" / "v1-oauth.json").read_text())
    verified["data"]["credentials"] = None
    with pytest.raises(ValidationError, match="credentials"):
        events.MailboxVerified.model_validate(verified)


def test_requests_from_before_the_auth_field_read_as_password_links() -> None:
    raw = json.loads((EXAMPLES / "LinkRequested" / "v1.json").read_text())
    del raw["data"]["auth"]
    assert events.LinkRequested.model_validate(raw).data.auth is events.AuthMethod.PASSWORD
