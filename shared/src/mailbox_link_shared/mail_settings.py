"""Values that describe how to reach a mail server, shared by the API, events and verifier."""

from enum import StrEnum


class ConnectionSecurity(StrEnum):
    """How a mail connection is secured: TLS from the first byte, or upgraded with STARTTLS."""

    SSL = "ssl"
    STARTTLS = "starttls"
