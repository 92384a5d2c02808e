"""Runs the OAuth broker: python -m oauth_broker."""

from mailbox_link_shared.http import serve
from mailbox_link_shared.logs import configure_logging
from mailbox_link_shared.tracing import configure_tracing
from oauth_broker.bootstrap import build_app
from oauth_broker.config import SERVICE_NAME, Settings


def main() -> None:
    """Reads settings from the environment and serves the callback and the event handlers."""
    settings = Settings()
    configure_logging(settings.log_level, SERVICE_NAME, settings.log_format)
    configure_tracing(settings, SERVICE_NAME)
    serve(build_app(settings), settings.http_host, settings.http_port)


if __name__ == "__main__":
    main()
