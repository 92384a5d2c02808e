"""One logging set-up for every service: plain lines on stderr, one level setting."""

import logging
import sys


def configure_logging(level: str, service_name: str) -> None:
    """Sends log records to stderr with time, service and logger name."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s {service_name} %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiokafka is chatty at INFO about group coordination; warnings still show.
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
