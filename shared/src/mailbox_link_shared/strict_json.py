"""Strict parsing of JSON request bodies, before any model sees them.

`json.loads` alone accepts what a schema cannot refuse afterwards: a duplicate key (the last
one wins silently), a lone surrogate escape such as "\\ud800" (a str no UTF-8 encoder, MongoDB
driver or Kafka serializer accepts, so it failed later as an internal error), NaN and
Infinity, numbers of thousands of digits (Python refuses over 4300 only with a ValueError) and
nesting as deep as the recursion limit. Here each is refused: a malformed body as a whole
(`MalformedJson`), a bad key or value naming its field (`InvalidJsonField`).
"""

import json
import math
from typing import Any

MAX_DEPTH = 32  # our bodies nest 3 levels; anything far deeper is not a request of ours
MAX_NUMBER_CHARS = 32  # a port or a count, never a 5000-digit number


class MalformedJson(ValueError):
    """The body is not one well-formed JSON document; `reason` says what is wrong."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class InvalidJsonField(ValueError):
    """The body is JSON, but one field (a dotted path) cannot be accepted; `reason` says why."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class _Object(dict[str, Any]):
    """A JSON object that remembers the keys it was given more than once."""

    duplicates: tuple[str, ...] = ()


def parse_json(raw: bytes) -> Any:
    """Returns the JSON value of a UTF-8 body, or raises MalformedJson / InvalidJsonField."""
    try:
        text = raw.decode("utf-8")  # strict: no BOM sniffing, no UTF-16, no surrogates
    except UnicodeDecodeError as exc:
        raise MalformedJson(f"it is not UTF-8 text (invalid byte at offset {exc.start})") from None
    try:
        value = json.loads(
            text,
            object_pairs_hook=_object,
            parse_int=_int,
            parse_float=_float,
            parse_constant=_constant,
        )
    except json.JSONDecodeError as exc:
        raise MalformedJson(f"{exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise MalformedJson(f"it nests deeper than {MAX_DEPTH} levels") from None
    _check(value)
    return value


def _object(pairs: list[tuple[str, Any]]) -> _Object:
    obj = _Object(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        repeated: list[str] = []
        for key, _ in pairs:
            if key in seen:
                repeated.append(key)
            seen.add(key)
        obj.duplicates = tuple(repeated)
    return obj


def _int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise MalformedJson(f"a number has more than {MAX_NUMBER_CHARS} characters")
    return int(text)


def _float(text: str) -> float:
    value = float(text) if len(text) <= MAX_NUMBER_CHARS else math.inf
    if not math.isfinite(value):
        raise MalformedJson(f"a number has more than {MAX_NUMBER_CHARS} characters or overflows")
    return value


def _constant(name: str) -> Any:
    raise MalformedJson(f"{name} is not a JSON value")


def _check(root: Any) -> None:
    """Walks the value without recursion: depth, duplicate keys, lone surrogates."""
    stack: list[tuple[Any, tuple[str, ...]]] = [(root, ())]
    while stack:
        value, path = stack.pop()
        if isinstance(value, str):
            if not _encodable(value):
                raise InvalidJsonField(
                    _dotted(path),
                    "contains a lone surrogate escape (\\ud800 to \\udfff), which is not a "
                    "character; send valid Unicode text",
                )
            continue
        if not isinstance(value, dict | list):
            continue
        if len(path) >= MAX_DEPTH:
            raise MalformedJson(f"it nests deeper than {MAX_DEPTH} levels")
        if isinstance(value, list):
            stack.extend((item, (*path, str(i))) for i, item in enumerate(value))
            continue
        for key in getattr(value, "duplicates", ()):
            raise InvalidJsonField(
                _dotted((*path, key)), "is given more than once; send each field once"
            )
        for key, item in value.items():
            if not _encodable(key):
                raise InvalidJsonField(
                    _dotted((*path, _printable(key))),
                    "this field name contains a lone surrogate escape; use the documented names",
                )
            stack.append((item, (*path, key)))


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _printable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _dotted(path: tuple[str, ...]) -> str:
    # The same dotted form as the validation errors' field names ("imap.port").
    return ".".join(path) or "body"
