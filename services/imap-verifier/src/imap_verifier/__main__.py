"""Runs the IMAP verifier: python -m imap_verifier."""

import uvicorn

from imap_verifier.bootstrap import build_app
from imap_verifier.config import SERVICE_NAME, Settings
from mailbox_link_shared.logs import configure_logging
from mailbox_link_shared.tracing import configure_tracing


def main() -> None:
    """Reads settings from the environment and consumes link requests."""
    settings = Settings()
    configure_logging(settings.log_level, SERVICE_NAME, settings.log_format)
    configure_tracing(settings, SERVICE_NAME)
    uvicorn.run(
        build_app(settings), host=settings.http_host, port=settings.http_port, log_config=None
    )


if __name__ == "__main__":
    main()
