"""One logging set-up for every service: lines on stderr, one level setting, JSON by default.

JSON (MBL_LOG_FORMAT=json): one object per line with time, level, service, logger, message,
and when known link_id, event_id, event_type (from `log_context`, set by the Kafka consumer
around each event and by the HTTP tracing middleware) and trace_id, span_id (the current span);
an exception is one string field, `exception`. Text (MBL_LOG_FORMAT=text): plain lines for a
person, with the link id when known.
"""

import contextlib
import contextvars
import json
import logging
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from opentelemetry import trace

# What the code handling one event or request knows about it; a contextvar, so every task
# (each event runs in its own) sees only its own.
_log_context: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "mailbox_link_log_context", default=None
)


@contextlib.contextmanager
def log_context(**fields: str | None) -> Iterator[None]:
    """Adds fields (link_id, event_id, event_type) to every log line written inside."""
    added = {key: value for key, value in fields.items() if value}
    token = _log_context.set({**(_log_context.get() or {}), **added})
    try:
        yield
    finally:
        _log_context.reset(token)


def current_log_context() -> dict[str, str]:
    """The fields `log_context` set for the code running now, with the current trace ids."""
    fields = dict(_log_context.get() or {})
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid:
        fields["trace_id"] = f"{span_context.trace_id:032x}"
        fields["span_id"] = f"{span_context.span_id:016x}"
    return fields


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object on one line."""

    def __init__(self, service_name: str) -> None:
        super().__init__()
        self._service = service_name

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self._service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(current_log_context())
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # ensure_ascii keeps a line one line whatever a message holds (no raw newlines).
        return json.dumps(entry, ensure_ascii=True, default=str)


class TextFormatter(logging.Formatter):
    """The plain line: time, service, level, logger, message, and the link when known."""

    def __init__(self, service_name: str) -> None:
        super().__init__(f"%(asctime)s {service_name} %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        link_id = (_log_context.get() or {}).get("link_id")
        return f"{line} [link {link_id}]" if link_id else line


def configure_logging(level: str, service_name: str, log_format: str = "json") -> None:
    """Sends log records to stderr, as JSON lines or (log_format="text") plain lines."""
    handler = logging.StreamHandler(sys.stderr)
    formatter: logging.Formatter = (
        TextFormatter(service_name) if log_format == "text" else JsonFormatter(service_name)
    )
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # FastStream's app logger writes its own coloured lines (imap-verifier's "app starting"):
    # through ours instead, so every line has one format.
    faststream = logging.getLogger("faststream")
    faststream.handlers.clear()
    faststream.propagate = True
    # aiokafka is chatty at INFO about group coordination; warnings still show.
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
