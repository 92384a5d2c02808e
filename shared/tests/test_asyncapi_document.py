"""The AsyncAPI document is generated from the catalogue (by shared, which has FastStream)."""

from mailbox_link_shared.asyncapi import DOCUMENT_PATH, asyncapi_yaml


def test_checked_in_asyncapi_document_is_current() -> None:
    assert DOCUMENT_PATH.read_text() == asyncapi_yaml(), "run `make contract` and commit the result"
