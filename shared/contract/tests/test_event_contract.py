"""Every event type of the catalogue has an example per schema version, the examples still
parse, and everything derived from the catalogue is current."""

import json
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from mailbox_link_contract import events
from mailbox_link_contract.files import EXAMPLES_DIR as EXAMPLES
from mailbox_link_contract.files import example_paths
from mailbox_link_contract.json_schemas import stale_schemas
from mailbox_link_contract.reading import NotHandled, Unreadable, read_event
from mailbox_link_contract.topics import CATALOGUE, EVENT_MODELS, SERVICES, Topics

EVENT_TYPES = EVENT_MODELS
ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("name", sorted(EVENT_TYPES))
def test_every_catalogued_event_type_has_examples_that_parse_and_round_trip(name: str) -> None:
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


def test_a_reader_refuses_an_unknown_schema_version_of_a_type_it_handles() -> None:
    raw = json.loads((EXAMPLES / "MailboxLinked" / "v1.json").read_text())
    raw["schema_version"] = 2
    outcome = read_event(json.dumps(raw), EVENT_MODELS)
    assert isinstance(outcome, Unreadable)
    assert "schema_version" in outcome.reason


def test_a_reader_skips_a_type_it_does_not_handle_whatever_its_version() -> None:
    raw = json.loads((EXAMPLES / "MailboxLinked" / "v1.json").read_text())
    raw.update(type="MailboxRenamed", schema_version=7, data={"anything": True})
    assert read_event(json.dumps(raw), EVENT_MODELS) == NotHandled("MailboxRenamed")


@pytest.mark.parametrize("raw", [b"{not json", b"", b"[1, 2]", b'{"data": {}}', b'{"type": 3}'])
def test_a_reader_calls_a_record_without_an_envelope_unreadable(raw: bytes) -> None:
    assert isinstance(read_event(raw, EVENT_MODELS), Unreadable)


def test_every_example_is_named_after_its_type_and_version() -> None:
    for path in example_paths():
        raw = json.loads(path.read_text())
        assert path.parent.name == raw["type"]
        assert re.fullmatch(rf"v{raw['schema_version']}(-[a-z]+)?\.json", path.name)


def test_every_event_model_is_named_after_its_type_and_on_one_topic() -> None:
    seen = [event for spec in CATALOGUE for event in spec.event_types]
    assert len(seen) == len(set(seen))
    for event_type, model in EVENT_MODELS.items():
        assert model.__name__ == event_type


def test_the_catalogue_names_only_our_services_as_consumers() -> None:
    for spec in CATALOGUE:
        assert set(spec.consumers) <= set(SERVICES), spec.role
        assert spec.partitions >= 1


def test_topics_has_one_name_per_catalogued_topic() -> None:
    topics = Topics.for_namespace("ns")
    assert topics.all() == tuple(f"ns.{spec.name}" for spec in CATALOGUE)


def test_checked_in_json_schemas_are_current() -> None:
    assert stale_schemas() == [], "run `make contract` and commit the result"


def test_shared_readme_topics_table_matches_the_catalogue() -> None:
    readme = (ROOT / "shared" / "contract" / "README.md").read_text()
    for spec in CATALOGUE:
        row = next(line for line in readme.splitlines() if f"`mailbox-link.{spec.name}`" in line)
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        for event_type in spec.event_types:
            assert f"`{event_type}`" in cells[1], (spec.name, event_type)
        assert set(re.findall(r"[a-z]+(?:-[a-z]+)*", cells[2])) >= set(spec.producers)
        assert set(re.findall(r"[a-z]+(?:-[a-z]+)*", cells[3])) >= set(spec.consumers)


def test_the_contract_package_imports_nothing_but_pydantic() -> None:
    package = ROOT / "shared" / "contract" / "src" / "mailbox_link_contract"
    allowed = {"pydantic", "mailbox_link_contract"}
    stdlib = {
        "json",
        "re",
        "sys",
        "dataclasses",
        "datetime",
        "enum",
        "typing",
        "uuid",
        "pathlib",
        "collections",
    }
    for path in package.rglob("*.py"):
        for module in re.findall(r"^(?:from|import) ([a-z_]+)", path.read_text(), re.M):
            assert module in allowed | stdlib, f"{path.name} imports {module}"


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


def test_a_failure_lists_the_others_found_once_each_and_flattened() -> None:
    from mailbox_link_contract.events import Failure
    from mailbox_link_contract.failures import FailureCode

    smtp = Failure.of(FailureCode.SECURITY_MISMATCH, "SMTP port 465 expects SSL/TLS")
    nested = Failure.of(FailureCode.TIMEOUT).with_others([smtp])
    failure = Failure.of(FailureCode.IMAP_AUTH_FAILED).with_others([nested, smtp])
    assert [o.code for o in failure.other_failures] == [
        FailureCode.TIMEOUT,
        FailureCode.SECURITY_MISMATCH,
    ]
    assert failure.other_failures[1].detail == "SMTP port 465 expects SSL/TLS"
    assert Failure.of(FailureCode.IMAP_AUTH_FAILED).with_others([smtp]).code == "imap_auth_failed"
