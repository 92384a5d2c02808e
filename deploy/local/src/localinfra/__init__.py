"""Local infrastructure for mailbox-link: real Kafka, a MongoDB-protocol server and Dovecot.

Everything runs as local child processes (no Docker needed); see ``localinfra.stack.LocalStack``.
"""

from localinfra.oauth_server import LocalOAuthServer
from localinfra.stack import Endpoints, LocalStack

__all__ = ["Endpoints", "LocalOAuthServer", "LocalStack"]
