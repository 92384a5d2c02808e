"""The error codes of every HTTP API, like the failure codes of the events: each with its
status and what it means, so a caller can act on the code alone.

Every 4xx/5xx body is {"error": <code>, "message": <sentence>, "fields": [{field, message}]}.
Codes are part of the API: add new ones, never rename or reuse one.
"""

from dataclasses import dataclass
from enum import StrEnum


class ApiErrorCode(StrEnum):
    """Machine-readable reason a request was refused."""

    INVALID_REQUEST = "invalid_request"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    BAD_REQUEST = "bad_request"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    REQUEST_TOO_LARGE = "request_too_large"
    TEMPORARILY_UNAVAILABLE = "temporarily_unavailable"
    IDEMPOTENCY_KEY_REUSED = "idempotency_key_reused"
    LINK_NOT_FOUND = "link_not_found"
    LINK_IN_PROGRESS = "link_in_progress"
    MAILBOX_NOT_FOUND = "mailbox_not_found"
    REGISTRY_UNAVAILABLE = "registry_unavailable"
    NO_MAIL_SERVER = "no_mail_server"
    OAUTH_NOT_SUPPORTED = "oauth_not_supported"
    OAUTH_REQUIRED = "oauth_required"
    SETTINGS_REQUIRED = "settings_required"
    PROVIDER_SERVERS_REQUIRED = "provider_servers_required"
    TOO_MANY_REQUESTS = "too_many_requests"
    ACCOUNT_NOT_FOUND = "account_not_found"
    RECONNECT_REQUIRED = "reconnect_required"


@dataclass(frozen=True)
class ApiErrorText:
    """The HTTP status a code comes with, and when it is answered."""

    status: int
    meaning: str


API_ERRORS: dict[ApiErrorCode, ApiErrorText] = {
    ApiErrorCode.INVALID_REQUEST: ApiErrorText(
        422, "A field is missing or invalid; `fields` names each and how to fix it."
    ),
    ApiErrorCode.UNAUTHORIZED: ApiErrorText(401, "No valid service token in Authorization."),
    ApiErrorCode.FORBIDDEN: ApiErrorText(
        403, "The service token is valid but not granted this route's scope; `fields` names it."
    ),
    ApiErrorCode.BAD_REQUEST: ApiErrorText(
        400,
        "The request is malformed: a body that is not well-formed UTF-8 JSON (field `body`), "
        "or a value that cannot be used now; `fields` names it.",
    ),
    ApiErrorCode.NOT_FOUND: ApiErrorText(404, "No such route."),
    ApiErrorCode.METHOD_NOT_ALLOWED: ApiErrorText(405, "The route does not take this method."),
    ApiErrorCode.REQUEST_TOO_LARGE: ApiErrorText(
        413, "The body is over 64 KiB (declared, or counted as it streams in, chunked or not)."
    ),
    ApiErrorCode.TEMPORARILY_UNAVAILABLE: ApiErrorText(
        503, "Kafka or MongoDB is not answering; retry after Retry-After seconds."
    ),
    ApiErrorCode.IDEMPOTENCY_KEY_REUSED: ApiErrorText(
        422, "The Idempotency-Key was used for a different request; send a new key."
    ),
    ApiErrorCode.LINK_NOT_FOUND: ApiErrorText(404, "No link with that id for this user."),
    ApiErrorCode.LINK_IN_PROGRESS: ApiErrorText(
        409, "The mailbox is still being linked; unlink it once the link has ended."
    ),
    ApiErrorCode.MAILBOX_NOT_FOUND: ApiErrorText(404, "No such mailbox linked to this user."),
    ApiErrorCode.REGISTRY_UNAVAILABLE: ApiErrorText(
        503, "link-api could not reach the registry; retry shortly."
    ),
    ApiErrorCode.NO_MAIL_SERVER: ApiErrorText(
        422, "Detection found no mail server for the domain; give the IMAP/SMTP settings."
    ),
    ApiErrorCode.OAUTH_NOT_SUPPORTED: ApiErrorText(
        422, "`auth: oauth` was asked for a provider without a sign-in; send a password."
    ),
    ApiErrorCode.OAUTH_REQUIRED: ApiErrorText(
        422, "The provider accepts only its sign-in (no passwords); omit the password."
    ),
    ApiErrorCode.SETTINGS_REQUIRED: ApiErrorText(
        422, "The address's servers could not be found; give the IMAP/SMTP settings."
    ),
    ApiErrorCode.PROVIDER_SERVERS_REQUIRED: ApiErrorText(
        422,
        "The address is hosted by a known provider (Google, Microsoft, Yahoo, AOL, iCloud): "
        "link it by the provider's sign-in or with the provider's own servers.",
    ),
    ApiErrorCode.TOO_MANY_REQUESTS: ApiErrorText(
        429,
        "A rate limit: this user's or account's link requests this hour, or the target login "
        "is in back-off after repeated wrong passwords (the field names which); retry after "
        "Retry-After seconds.",
    ),
    ApiErrorCode.ACCOUNT_NOT_FOUND: ApiErrorText(
        404,
        "The service token is bound to other accounts (MBL_SERVICE_KEY_ACCOUNTS); the same "
        "answer whether or not the account exists.",
    ),
    ApiErrorCode.RECONNECT_REQUIRED: ApiErrorText(
        409,
        "The mailbox's provider or server no longer accepts its authorization (the same word "
        "as the failure code): no credential is handed out; ask its owner to reconnect it.",
    ),
}
