"""Strict JSON bodies: what json.loads would let through is refused, a field named when one
is at fault, the body as a whole when it is malformed."""

import pytest

from mailbox_link_shared.strict_json import (
    MAX_DEPTH,
    InvalidJsonField,
    MalformedJson,
    parse_json,
)


def test_a_well_formed_body_parses_as_json_loads_would() -> None:
    raw = '{"email": "ünï@example.org", "imap": {"port": 993, "ok": true, "w": 1.5}, "l": [1]}'
    assert parse_json(raw.encode()) == {
        "email": "ünï@example.org",
        "imap": {"port": 993, "ok": True, "w": 1.5},
        "l": [1],
    }


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b'{"email": "a@b.org", "email": "c@d.org"}', "email"),
        (b'{"imap": {"port": 993, "port": 1}}', "imap.port"),
        (b'{"items": [{"a": 1, "a": 2}]}', "items.0.a"),
        (b'{"password": "\\ud800"}', "password"),
        (b'{"imap": {"password": "ok\\udfffok"}}', "imap.password"),
        (b'{"list": ["fine", "\\udc00"]}', "list.1"),
        (b'{"\\ud800": 1}', "\\ud800"),
    ],
)
def test_duplicate_keys_and_lone_surrogates_name_the_field(raw: bytes, field: str) -> None:
    with pytest.raises(InvalidJsonField) as refused:
        parse_json(raw)
    assert refused.value.field == field


def test_a_surrogate_pair_is_one_valid_character() -> None:
    assert parse_json(b'{"p": "\\ud83d\\ude00"}') == {"p": "\U0001f600"}


@pytest.mark.parametrize(
    "raw",
    [
        b'{"email": "al\xffice@example.org"}',  # not UTF-8
        b'{"email": "\xed\xa0\x80"}',  # a surrogate encoded as UTF-8 bytes
        '{"a": 1}'.encode("utf-16"),  # json.loads would sniff UTF-16
        b"\xef\xbb\xbf{}",  # a byte order mark
        b'{"port": ' + b"9" * 5000 + b"}",
        b'{"port": ' + b"9" * 33 + b"}",
        b'{"w": 1e999}',
        b'{"w": NaN}',
        b'{"w": -Infinity}',
        b"[" * 5000 + b"]" * 5000,
        b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1),
        b'{"a": 1} x',
        b"not json",
        b"",
    ],
)
def test_malformed_bodies_are_refused_as_a_whole(raw: bytes) -> None:
    with pytest.raises(MalformedJson):
        parse_json(raw)


def test_nesting_up_to_the_limit_is_accepted() -> None:
    assert parse_json(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH) is not None
