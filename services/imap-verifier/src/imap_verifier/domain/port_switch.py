"""When a failed login deserves a second try on the standard other port, and what to tell the
user when that one works: plain rules, no network."""

from mailbox_link_contract.events import ServerSettings
from mailbox_link_contract.failures import FailureCode
from mailbox_link_contract.values import ConnectionSecurity

SSL, STARTTLS = ConnectionSecurity.SSL, ConnectionSecurity.STARTTLS
# The standard other way to reach the same service: implicit TLS and STARTTLS, both ways.
OTHER_WAY = {
    (465, SSL): (587, STARTTLS),
    (587, STARTTLS): (465, SSL),
    (993, SSL): (143, STARTTLS),
    (143, STARTTLS): (993, SSL),
}
# Failures that a different port or security may cure (not a wrong password or host).
CONNECTION_FAILURES = frozenset(
    {
        FailureCode.IMAP_UNREACHABLE,
        FailureCode.SMTP_UNREACHABLE,
        FailureCode.TLS_FAILED,
        FailureCode.TIMEOUT,
        FailureCode.NOT_AN_IMAP_SERVER,
        FailureCode.NOT_AN_SMTP_SERVER,
    }
)


def other_way_to_try(server: ServerSettings, failure: FailureCode) -> ServerSettings | None:
    """Returns the same server on its standard other port and security, if the failure is one
    that may be cured that way and the port has a standard other; else None."""
    return standard_other_way(server) if may_be_cured_elsewhere(failure) else None


def standard_other_way(server: ServerSettings) -> ServerSettings | None:
    """Returns the same server on its standard other port and security, if it has one."""
    other = OTHER_WAY.get((server.port, server.security))
    if other is None:
        return None
    port, security = other
    return server.model_copy(update={"port": port, "security": security})


def may_be_cured_elsewhere(failure: FailureCode) -> bool:
    """Tells whether another port or security might cure the failure (not a wrong password)."""
    return failure in CONNECTION_FAILURES


def other_port_works_detail(
    kind: str, tried: ServerSettings, failure: FailureCode, works: ServerSettings
) -> str:
    """Says which setting failed, which works, and what to change."""
    return (
        f"{kind} on port {tried.port} with {_words(tried.security)} failed "
        f"({failure.value}), but port {works.port} with {_words(works.security)} works: "
        f"use port {works.port}, security {works.security.value}."
    )


def _words(security: ConnectionSecurity) -> str:
    return "SSL/TLS" if security is SSL else "STARTTLS"
