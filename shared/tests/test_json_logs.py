"""Log lines: one JSON object per line with the event's and the trace's ids, or plain text."""

import io
import json
import logging
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from mailbox_link_shared.logs import JsonFormatter, TextFormatter, log_context


@pytest.fixture
def logger() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("registry"))
    log = logging.getLogger("test_json_logs")
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.DEBUG)
    yield log, stream
    log.handlers.clear()


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_line_is_one_json_object(logger: tuple[logging.Logger, io.StringIO]) -> None:
    log, stream = logger
    log.info("link %s reserved\nsecond line", "l-1")
    (entry,) = _lines(stream)
    assert entry["level"] == "INFO"
    assert entry["service"] == "registry"
    assert entry["logger"] == "test_json_logs"
    assert entry["message"] == "link l-1 reserved\nsecond line"
    assert str(entry["time"]).endswith("+00:00")
    assert "link_id" not in entry
    assert "trace_id" not in entry


def test_the_context_and_the_trace_are_named(logger: tuple[logging.Logger, io.StringIO]) -> None:
    log, stream = logger
    context = SpanContext(trace_id=0x1234, span_id=0x56, is_remote=False, trace_flags=TraceFlags(1))
    with (
        trace.use_span(NonRecordingSpan(context)),
        log_context(link_id="l-1", event_id="e-1", event_type="LinkRequested"),
    ):
        log.info("handled")
    log.info("after")
    inside, after = _lines(stream)
    assert inside["link_id"] == "l-1"
    assert inside["event_id"] == "e-1"
    assert inside["event_type"] == "LinkRequested"
    assert inside["trace_id"] == f"{0x1234:032x}"
    assert inside["span_id"] == f"{0x56:016x}"
    assert "link_id" not in after


def test_an_exception_is_one_string_field(logger: tuple[logging.Logger, io.StringIO]) -> None:
    log, stream = logger
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("giving up")
    (entry,) = _lines(stream)
    assert isinstance(entry["exception"], str)
    assert "ValueError: boom" in str(entry["exception"])
    assert len(stream.getvalue().splitlines()) == 1


def test_text_lines_name_the_link() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "link %s linked", ("l-9",), None)
    with log_context(link_id="l-9"):
        line = TextFormatter("link-api").format(record)
    assert "link-api INFO x: link l-9 linked [link l-9]" in line
