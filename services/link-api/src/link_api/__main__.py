"""Runs link-api: python -m link_api."""

from link_api.bootstrap import build_app
from link_api.config import SERVICE_NAME, Settings
from mailbox_link_shared.http import serve
from mailbox_link_shared.logs import configure_logging
from mailbox_link_shared.tracing import configure_tracing


def main() -> None:
    """Reads settings from the environment and serves the API."""
    settings = Settings()
    configure_logging(settings.log_level, SERVICE_NAME, settings.log_format)
    configure_tracing(settings, SERVICE_NAME)
    serve(build_app(settings), settings.http_host, settings.http_port)


if __name__ == "__main__":
    main()
