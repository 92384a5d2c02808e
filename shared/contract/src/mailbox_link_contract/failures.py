"""The documented set of reasons a link can fail, each with words a person can act on.

Codes are part of the public event contract: add new ones, never rename or reuse one.
"""

from dataclasses import dataclass
from enum import StrEnum


class FailureCode(StrEnum):
    """Machine-readable reason a link did not succeed."""

    IMAP_AUTH_FAILED = "imap_auth_failed"
    SMTP_AUTH_FAILED = "smtp_auth_failed"
    IMAP_UNREACHABLE = "imap_unreachable"
    SMTP_UNREACHABLE = "smtp_unreachable"
    TLS_FAILED = "tls_failed"
    POP3_ONLY = "pop3_only"
    NOT_AN_IMAP_SERVER = "not_an_imap_server"
    NOT_AN_SMTP_SERVER = "not_an_smtp_server"
    TIMEOUT = "timeout"
    HOST_NOT_FOUND = "host_not_found"
    HOST_NOT_ALLOWED = "host_not_allowed"
    ALREADY_LINKED_ELSEWHERE = "already_linked_elsewhere"
    PLAN_LIMIT_REACHED = "plan_limit_reached"
    ALREADY_LINKED = "already_linked"
    LINK_IN_PROGRESS = "link_in_progress"
    RESERVATION_EXPIRED = "reservation_expired"
    OTHER_PORT_WORKS = "other_port_works"
    CONSENT_DENIED = "consent_denied"
    ACCOUNT_MISMATCH = "account_mismatch"
    GMAIL_DISABLED = "gmail_disabled"
    IMAP_DISABLED = "imap_disabled"
    SMTP_DISABLED = "smtp_disabled"
    SCOPE_MISSING = "scope_missing"
    NO_REFRESH_TOKEN = "no_refresh_token"  # noqa: S105 - a code, not a token
    PROVIDER_ERROR = "provider_error"
    SESSION_EXPIRED = "session_expired"
    RECONNECT_REQUIRED = "reconnect_required"
    INTERNAL_ERROR = "internal_error"
    OWNERSHIP_UNPROVEN = "ownership_unproven"
    TOO_MANY_ATTEMPTS = "too_many_attempts"
    REQUEST_NOT_SENT = "request_not_sent"
    SECURITY_MISMATCH = "security_mismatch"
    DEPLOYMENT_MISCONFIGURED = "deployment_misconfigured"
    MAILBOX_UNLINKED = "mailbox_unlinked"


@dataclass(frozen=True)
class FailureText:
    """What we tell the person: what went wrong, and what to do about it."""

    message: str
    remediation: str


FAILURE_TEXTS: dict[FailureCode, FailureText] = {
    FailureCode.IMAP_AUTH_FAILED: FailureText(
        "The IMAP server rejected the username or password.",
        "Check the username and password. If your provider uses two-step verification, "
        "create an app password and use it here.",
    ),
    FailureCode.SMTP_AUTH_FAILED: FailureText(
        "The SMTP server rejected the username or password.",
        "Check the SMTP username and password; some providers need an app password "
        "or need SMTP AUTH enabled for the mailbox.",
    ),
    FailureCode.IMAP_UNREACHABLE: FailureText(
        "We could not connect to the IMAP server.",
        "Check the IMAP host and port (usually 993 for SSL/TLS, 143 for STARTTLS).",
    ),
    FailureCode.SMTP_UNREACHABLE: FailureText(
        "We could not connect to the SMTP server.",
        "Check the SMTP host and port (usually 465 for SSL/TLS, 587 for STARTTLS).",
    ),
    FailureCode.TLS_FAILED: FailureText(
        "A secure connection to the mail server could not be established.",
        "Check that the security setting matches the port (SSL/TLS or STARTTLS) and that "
        "the server presents a valid certificate for the host name you entered.",
    ),
    FailureCode.POP3_ONLY: FailureText(
        "This server speaks POP3, not IMAP.",
        "Enable IMAP access in your mail provider's settings, then use the IMAP host and port.",
    ),
    FailureCode.NOT_AN_IMAP_SERVER: FailureText(
        "The server at that address is not an IMAP server.",
        "Check the IMAP host and port; you may have entered the SMTP settings instead.",
    ),
    FailureCode.NOT_AN_SMTP_SERVER: FailureText(
        "The server at that address is not an SMTP server.",
        "Check the SMTP host and port; you may have entered the IMAP settings instead.",
    ),
    FailureCode.TIMEOUT: FailureText(
        "The mail server did not answer in time.",
        "Check the host and port, and that the server accepts connections from the internet; "
        "then try again.",
    ),
    FailureCode.HOST_NOT_FOUND: FailureText(
        "That host name does not exist.",
        "Check the spelling of the IMAP and SMTP host names.",
    ),
    FailureCode.HOST_NOT_ALLOWED: FailureText(
        "That host points to a private or reserved network address we may not connect to.",
        "Use your mail server's public host name.",
    ),
    FailureCode.ALREADY_LINKED_ELSEWHERE: FailureText(
        "This mailbox is already linked to another account.",
        "Unlink it from the other account first, or link a different mailbox.",
    ),
    FailureCode.PLAN_LIMIT_REACHED: FailureText(
        "You have linked as many mailboxes as your plan allows.",
        "Unlink a mailbox you no longer use, or upgrade your plan.",
    ),
    FailureCode.ALREADY_LINKED: FailureText(
        "This mailbox is already linked to your account.",
        "Nothing to do: it is ready to use. To give it a new password or sign in again, link "
        "it again with reconnect set to true: it keeps its place and id.",
    ),
    FailureCode.LINK_IN_PROGRESS: FailureText(
        "You are already linking this mailbox.",
        "Wait for that link to finish (see its status), then try again if it failed.",
    ),
    FailureCode.OWNERSHIP_UNPROVEN: FailureText(
        "We sent a message with a one-time code to this address, and it did not arrive in "
        "the INBOX of the account you entered, so these servers do not prove you own the "
        "address.",
        "Enter the IMAP/SMTP servers and login of the account that receives this address's "
        "mail (usually shown in your mail host's settings), check that the address's mail "
        "reaches that INBOX, and try again.",
    ),
    FailureCode.REQUEST_NOT_SENT: FailureText(
        "We accepted this link request but could not pass it on for checking in time, so "
        "nothing was checked or linked.",
        "Request the link again with a new Idempotency-Key (or none).",
    ),
    FailureCode.RESERVATION_EXPIRED: FailureText(
        "Checking this mailbox took too long, so the link was cancelled.",
        "Try linking it again; if it keeps happening, contact support.",
    ),
    FailureCode.OTHER_PORT_WORKS: FailureText(
        "The server did not answer with this port and security, but it does with another.",
        "Change the port and security to the ones named in the detail, then link again.",
    ),
    FailureCode.CONSENT_DENIED: FailureText(
        "You cancelled the sign-in, so we were not given access to the mailbox.",
        "Link the mailbox again and choose Allow on the provider's consent screen.",
    ),
    FailureCode.ACCOUNT_MISMATCH: FailureText(
        "You signed in with a different account than the address you asked to link.",
        "Link again and sign in as that address. If the address is a group or an alias, "
        "link the individual mailbox that receives its mail instead.",
    ),
    FailureCode.GMAIL_DISABLED: FailureText(
        "Gmail is turned off for this Google account.",
        "Ask your Google Workspace administrator to turn the Gmail service on for you "
        "(Admin console > Apps > Google Workspace > Gmail > Service status), then link again.",
    ),
    FailureCode.IMAP_DISABLED: FailureText(
        "The provider accepted the sign-in, but IMAP access is turned off for this mailbox.",
        "Ask your administrator to allow IMAP for the mailbox (Microsoft 365 admin center: the "
        "user's Mail > Manage email apps; Google Workspace Admin console: Apps > Gmail > End "
        "User Access > POP and IMAP access), then link again.",
    ),
    FailureCode.SMTP_DISABLED: FailureText(
        "The provider accepted the sign-in, but sending mail (authenticated SMTP) is turned off "
        "for this mailbox.",
        "Ask your administrator to allow authenticated SMTP for the mailbox (Microsoft 365 "
        "admin center: the user's Mail > Manage email apps > Authenticated SMTP), then link "
        "again.",
    ),
    FailureCode.SCOPE_MISSING: FailureText(
        "You did not grant every permission we need to read and send your mail.",
        "Link again and leave every permission on the consent screen checked.",
    ),
    FailureCode.NO_REFRESH_TOKEN: FailureText(
        "The provider did not grant lasting access, so the link would stop working within an hour.",
        "Remove this app from your account's connected apps (Google: "
        "myaccount.google.com/connections), then link again.",
    ),
    FailureCode.PROVIDER_ERROR: FailureText(
        "The provider's sign-in did not complete because of an error on their side.",
        "Try again in a few minutes; the detail says what the provider answered.",
    ),
    FailureCode.SESSION_EXPIRED: FailureText(
        "The sign-in took too long, or its link was already used.",
        "Start linking the mailbox again and finish the sign-in within 10 minutes.",
    ),
    FailureCode.RECONNECT_REQUIRED: FailureText(
        "The provider no longer accepts our access to this mailbox (the access was removed, or "
        "the password or security settings changed).",
        "Reconnect the mailbox: link it again (same address), signing in at the provider or "
        "giving the new password; it keeps its place and id.",
    ),
    FailureCode.INTERNAL_ERROR: FailureText(
        "We could not check this mailbox because of a problem on our side.",
        "Try again in a few minutes; if it keeps happening, contact support.",
    ),
    FailureCode.TOO_MANY_ATTEMPTS: FailureText(
        "This login, or its mail server, was tried too often recently (several wrong passwords, "
        "or many links at once), so we did not log in this time, to protect the mailbox.",
        "Wait until the time the detail gives, check the username and password (or create an "
        "app password), then try again.",
    ),
    FailureCode.SECURITY_MISMATCH: FailureText(
        "The server answers on this port, but with another security setting than the one "
        "chosen (SSL/TLS versus STARTTLS).",
        "Change the security setting to the one the detail names (or the port to match it), "
        "then link again.",
    ),
    FailureCode.DEPLOYMENT_MISCONFIGURED: FailureText(
        "Sign-in with this provider is misconfigured in this deployment: the provider refused "
        "our app's own credentials. Nothing is wrong with your account.",
        "Contact the product's support; its operators must fix the app's client id or secret. "
        "Then link again.",
    ),
    FailureCode.MAILBOX_UNLINKED: FailureText(
        "The mailbox this link was reconnecting was unlinked meanwhile, so nothing was "
        "reconnected.",
        "Link the mailbox again if you still want it (without reconnect).",
    ),
}


def text_for(code: FailureCode) -> FailureText:
    """Returns the person-facing words for a failure code."""
    return FAILURE_TEXTS[code]


# Since 1.6.0: the codes by which a health check says the mailbox refused our credentials, so
# its user must act (after MBL_HEALTH_AUTH_FAILURES in a row, reconnect_required). Any other
# code (unreachable, timeout, TLS, server or provider errors, our own deployment's
# misconfiguration) makes a linked mailbox only `degraded`: retried, never the user's to fix.
CREDENTIALS_REFUSED = frozenset(
    {
        FailureCode.IMAP_AUTH_FAILED,
        FailureCode.SMTP_AUTH_FAILED,
        FailureCode.RECONNECT_REQUIRED,
        FailureCode.IMAP_DISABLED,
        FailureCode.SMTP_DISABLED,
        FailureCode.GMAIL_DISABLED,
        FailureCode.SCOPE_MISSING,
        FailureCode.NO_REFRESH_TOKEN,
        FailureCode.ACCOUNT_MISMATCH,
    }
)


def refuses_credentials(code: FailureCode) -> bool:
    """True if a health check failing with this code means the credentials no longer work."""
    return code in CREDENTIALS_REFUSED
